"""LoRA layers: the low-rank update beside a Linear / GPT-2 Conv1D (optionally DoRA's magnitude, or a
PiSSA/OLoRA start that leaves the base weights untouched) and beside an Embedding."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D  # GPT-2 style: weight stored as (in, out)

from slimtune import kernels
from slimtune.core import targets as tg
from slimtune.core.layer import AdapterLayer
from slimtune.errors import ConfigError
from slimtune.methods.bias import BiasOffsets, bias_export, bias_import
from slimtune.methods.lora_variants import (
    Magnitude,
    dora_delta,
    dora_merge_delta,
    olora_init,
    pissa_init,
    row_norm,
)

if TYPE_CHECKING:
    from slimtune.methods.lora import LoraConfig


# Counts parameter (re)registrations anywhere (load_state_dict(assign=True), FSDP sharding, new modules): a
# layer's cached fast-path plan holds parameters, so any such change makes every plan be decided afresh.
# (Module registrations cannot be counted the same way: transformers slices a ModuleList in every forward.)
_registrations = [0]


def _registered(*_: Any) -> None:
    _registrations[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_registered)


def _weight(module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"{type(module).__name__} has no weight tensor to adapt")
    return weight


def _linear(table: nn.ModuleDict, name: str) -> nn.Linear:
    return cast(nn.Linear, table[name])  # only Linears are ever put there


def is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, Conv1D)


def linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def supported(module: nn.Module) -> bool:
    return linear_like(module) or isinstance(module, nn.Embedding)


class _LoraBase(AdapterLayer):
    """What the Linear/Conv1D and Embedding layers share: ranks, scales and optional bias offsets."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.bias_offsets = BiasOffsets()

    def _register(self, name: str, r: int, alpha: float, rslora: bool, train_bias: bool) -> None:
        self.r[name] = r
        self.scaling[name] = alpha / math.sqrt(r) if rslora else alpha / r
        if train_bias:
            self.bias_offsets.add(name, self.base_tensors()["bias"])

    def _forget(self, name: str) -> None:
        self.r.pop(name)
        self.scaling.pop(name)
        if name in self.bias_offsets:
            del self.bias_offsets.values[name]

    def adapter_names(self) -> list[str]:
        return list(self.r)

    def _bias_params(self, name: str) -> dict[str, torch.Tensor]:
        # PEFT keeps the wrapped module's bias under base_layer.bias
        return {"base_layer.bias": self.bias_offsets.values[name]} if name in self.bias_offsets else {}

    def _bias_delta(self, name: str) -> dict[str, torch.Tensor]:
        return {"bias": self.bias_offsets.offset(name).detach()} if name in self.bias_offsets else {}

    def export_state(self, name: str) -> dict[str, torch.Tensor]:
        state = {k: p.detach() for k, p in self.adapter_parameters(name).items() if k != "base_layer.bias"}
        if name in self.bias_offsets:
            state["base_layer.bias"] = bias_export(self.bias_offsets, name)
        return state

    def import_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        plain = {k: v for k, v in state.items() if k != "base_layer.bias"}
        super().import_state(name, plain)
        if "base_layer.bias" in state:
            bias_import(self.bias_offsets, name, state["base_layer.bias"])


class LoraLinear(_LoraBase):
    """LoRA beside an ``nn.Linear`` or a GPT-2 ``Conv1D`` (whose weight is stored transposed), with optional
    DoRA magnitude and PiSSA / OLoRA starts.

    PiSSA and OLoRA start A, B at a decomposition of W and subtract ``s * B0 @ A0`` from W. Here W stays as it
    is and the frozen ``s * B0 @ A0`` is subtracted in the update instead: the same function and gradients,
    ``disabled()`` still gives the base, and the adapter saves as the plain rank-2r LoRA ``[B, -B0] [A; A0]``
    that PEFT writes after conversion, loadable onto the original base.
    """

    own_children = frozenset({"lora_A", "lora_B", "lora_dropout", "lora_magnitude_vector", "init_A", "init_B",
                              "bias_offsets"})

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        inner = tg.innermost(base_layer)
        self.fan_in_fan_out = is_conv1d(inner)
        rows, cols = _weight(inner).shape
        self.in_features, self.out_features = (rows, cols) if self.fan_in_fan_out else (cols, rows)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ModuleDict()  # DoRA
        self.init_A = nn.ParameterDict()  # PiSSA / OLoRA: frozen starting point
        self.init_B = nn.ParameterDict()
        self._merged_dora: dict[str, torch.Tensor] = {}  # exactly what merging DoRA added, (out, in)
        # the fast path's decision for the layer state in _plan_key (see _fast_forward)
        self._plan_key: tuple | None = None
        self._plan: tuple | None = None
        self._norm_cache: dict = {}  # DoRA: |W|^2 per row, W being frozen (kernels.dora_linear)

    def base_weight(self) -> torch.Tensor:
        """The base weight in (out, in) orientation, float32, detached."""
        weight = _weight(tg.innermost(self.base_layer)).detach().float()
        return weight.T if self.fan_in_fan_out else weight

    def add(self, name: str, cfg: LoraConfig, r: int, alpha: float, train_bias: bool) -> None:
        weight = _weight(tg.innermost(self.base_layer))
        kw = {"device": weight.device, "dtype": weight.dtype}
        a = nn.Linear(self.in_features, r, bias=False, **kw)  # type: ignore[arg-type]
        b = nn.Linear(r, self.out_features, bias=False, **kw)  # type: ignore[arg-type]
        self._register(name, r, alpha, cfg.use_rslora, train_bias)
        with torch.no_grad():
            start = _start(cfg.init, self.base_weight(), r, self.scaling[name])
            if start is not None:
                a.weight.copy_(start[0])
                b.weight.copy_(start[1])
                self.init_A[name] = nn.Parameter(start[0].to(weight.dtype), requires_grad=False)
                self.init_B[name] = nn.Parameter(start[1].to(weight.dtype), requires_grad=False)
            else:
                _default_init(a.weight, b.weight, cfg.init, r)
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        if cfg.use_dora:
            norm = row_norm(self.base_weight(), self._lora_weight(name), self.scaling[name])
            self.lora_magnitude_vector[name] = Magnitude(norm.to(weight.dtype))

    def remove(self, name: str) -> None:
        for table in (self.lora_A, self.lora_B, self.lora_dropout, self.lora_magnitude_vector, self.init_A,
                      self.init_B):
            if name in table:
                del table[name]
        self._merged_dora.pop(name, None)
        self._forget(name)

    def adapter_parameters(self, name: str) -> dict[str, torch.Tensor]:
        params = {"lora_A.weight": _linear(self.lora_A, name).weight,
                  "lora_B.weight": _linear(self.lora_B, name).weight}
        if name in self.lora_magnitude_vector:
            # PEFT 0.21 writes the magnitude without ".weight" (older versions with it; the loader takes both)
            params["lora_magnitude_vector"] = cast(Magnitude, self.lora_magnitude_vector[name]).weight
        return {**params, **self._bias_params(name)}

    def _lora_weight(self, name: str) -> torch.Tensor:
        """B @ A (out, in) in float32, including the frozen PiSSA/OLoRA correction."""
        ab = _linear(self.lora_B, name).weight.float() @ _linear(self.lora_A, name).weight.float()
        if name in self.init_A:
            ab = ab - self.init_B[name].float() @ self.init_A[name].float()
        return ab

    def delta(self, name: str, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        a = _linear(self.lora_A, name)
        xd = self.lora_dropout[name](x.to(a.weight.dtype))
        if name in self.init_A:  # PiSSA / OLoRA: one rank-2r product [B, -B0] [A; A0], no second (N, out) pass
            a_all = torch.cat((a.weight, self.init_A[name]))
            b_all = torch.cat((_linear(self.lora_B, name).weight, -self.init_B[name]), dim=1)
            out = F.linear(F.linear(xd, a_all), b_all)
        else:
            out = self.lora_B[name](a(xd))
        dora = name in self.lora_magnitude_vector
        out = self._dora(name, x, xd, base, out) if dora else out * self.scaling[name]
        if name in self.bias_offsets:
            out = out + self.bias_offsets.offset(name)
        return out

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        fast = None if args or kwargs or kernels.mode() == "reference" else self._fast_forward(x)
        return fast if fast is not None else super().forward(x, *args, **kwargs)

    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """slimtune.kernels' path for a plain nn.Linear base holding plain LoRA (or, alone, DoRA) adapters of
        x's dtype; None where the reference path must run (PiSSA/OLoRA, bias offsets, Conv1D, stacked layers).

        What to run is decided once per layer state (active, merged, disabled, training, mixed-batch rows, and
        parameters registered anywhere, which adding an adapter does) and kept, so a training step spends no
        Python time re-deciding it in every layer."""
        rows = self.row_adapters
        if torch.compiler.is_compiling():  # a traced graph specialises on the layer state itself
            return self._run_plan(x, self._decide(), rows)
        key = (self.active, tuple(self.merged), self.disabled, self.training, _registrations[0],
               None if rows is None else tuple(rows))
        plan = self._plan if self._plan_key == key else self._make_plan(key)
        if plan is not None and not self._current(plan):  # a module swapped in since (base, dropout)
            plan = self._make_plan(key)
        return self._run_plan(x, plan, rows)

    def _run_plan(self, x: torch.Tensor, plan: tuple | None, rows: list[str | None] | None) -> torch.Tensor | None:
        if plan is None or not kernels.enabled(x, plan[1]):
            return None
        cast = kernels.autocast_dtype(x)
        if cast is None:
            return self._run(x, plan, rows, plan[2:6])
        if plan[1] == "mixed":  # casts are fresh tensors each call: every call would add a stack to the cache
            return None
        with torch.autocast(x.device.type, enabled=False):  # autocast's products, in autocast's dtype
            tensors = tuple(t if t is None else t.to(cast) for t in plan[2:6])
            return self._run(x.to(cast), plan, rows, tensors)

    def _run(self, x: torch.Tensor, plan: tuple, rows: list[str | None] | None,
             tensors: tuple) -> torch.Tensor | None:
        kind, extra, scaling = plan[1], plan[6], plan[7]
        weight, bias, a, b = tensors
        if weight.dtype != x.dtype or a.dtype != weight.dtype:  # a cast since the plan was made
            return None
        if kind == "lora":
            drop = extra[1]
            xd = drop(x) if self.training and not isinstance(drop, nn.Identity) else x
            return kernels.lora_linear(x, weight, bias, a, b, scaling, xd=xd)
        if kind == "dora":
            return kernels.dora_linear(x, weight, bias, a, b, extra, scaling, recompute=kernels.dora_recompute(),
                                       cache=self._norm_cache)
        names, a_list, b_list, scalings = extra
        if len(rows or ()) != x.shape[0]:
            return None
        return kernels.gathered_lora(x, weight, bias, a_list, b_list, scalings, names, rows)  # type: ignore[arg-type]

    def _current(self, plan: tuple) -> bool:
        return plan[0] is self.base_layer and (plan[1] != "lora" or plan[6][1] is self.lora_dropout[plan[6][0]])

    def _make_plan(self, key: tuple) -> tuple | None:
        self._plan_key, self._plan = key, self._decide()
        return self._plan

    def _decide(self) -> tuple | None:
        base = self.base_layer
        if self.disabled or type(base) is not nn.Linear:
            return None
        weight, bias = base.weight, base.bias
        if self.row_adapters is not None:
            names = [n for n in dict.fromkeys(self.row_adapters) if n is not None and n in self.r]
            if not names or not all(self._fast_ok(n, dora=False) for n in names):
                return None  # (no row uses an adapter of this layer: the base alone, on the reference path)
            extra = (names, [_linear(self.lora_A, n).weight for n in names],
                     [_linear(self.lora_B, n).weight for n in names], [self.scaling[n] for n in names])
            return (base, "mixed", weight, bias, weight, weight, extra, 1.0)
        todo = [n for n in self.active if n not in self.merged]
        if len(todo) != 1 or not self._fast_ok(todo[0], dora=True):
            return None
        name = todo[0]
        a, b = _linear(self.lora_A, name).weight, _linear(self.lora_B, name).weight
        if name in self.lora_magnitude_vector:
            magnitude = cast(Magnitude, self.lora_magnitude_vector[name]).weight
            return (base, "dora", weight, bias, a, b, magnitude, self.scaling[name])
        return (base, "lora", weight, bias, a, b, (name, self.lora_dropout[name]), self.scaling[name])

    def _fast_ok(self, name: str, dora: bool) -> bool:
        if name in self.init_A or name in self.bias_offsets:
            return False
        if name in self.lora_magnitude_vector:  # DoRA with dropout scales W on the dropped-out input
            return dora and not (self.training and not isinstance(self.lora_dropout[name], nn.Identity))
        if self.row_adapters is not None and self.training and not isinstance(self.lora_dropout[name], nn.Identity):
            return False
        weight = _linear(self.lora_A, name).weight
        return weight.dtype == _linear(self.lora_B, name).weight.dtype == _weight(self.base_layer).dtype

    def _dora(self, name: str, x: torch.Tensor, xd: torch.Tensor, base: torch.Tensor,
              lora_out: torch.Tensor) -> torch.Tensor:
        weight = self.base_weight().to(xd.dtype)
        norm = row_norm(weight, self._lora_weight(name).detach().to(xd.dtype), self.scaling[name]).detach()
        if self.training and not isinstance(self.lora_dropout[name], nn.Identity):
            # dropout on: DoRA scales W applied to the dropped-out input, as PEFT does
            base_no_bias = F.linear(xd, weight)
        else:
            bias = self.base_tensors().get("bias")
            base_no_bias = base - bias if bias is not None else base
        magnitude = cast(Magnitude, self.lora_magnitude_vector[name]).weight
        return dora_delta(lora_out, base_no_bias, magnitude, norm, self.scaling[name])

    def delta_weight(self, name: str) -> dict[str, torch.Tensor]:
        lora_weight = self._lora_weight(name).detach()
        if name in self.lora_magnitude_vector:
            # DoRA's update depends on W: take the weight as it was before other adapters were merged in, so
            # that merging several adapters gives what they compute side by side, unmerged
            magnitude = cast(Magnitude, self.lora_magnitude_vector[name]).weight.detach().float()
            delta = dora_merge_delta(self._unmerged_weight(), lora_weight, magnitude, self.scaling[name])[0]
        else:
            delta = lora_weight * self.scaling[name]
        return {"weight": delta.T if self.fan_in_fan_out else delta, **self._bias_delta(name)}

    def _unmerged_weight(self) -> torch.Tensor:
        weight = self.base_weight()
        for merged in self.merged:
            done = self._merged_dora.get(merged)
            weight = weight - (done if done is not None else self._lora_weight(merged).detach() * self.scaling[merged])
        return weight

    def merge(self, name: str) -> None:
        if name in self.lora_magnitude_vector and name not in self.merged:
            self._merged_dora[name] = self.delta_weight(name)["weight"]
            if self.fan_in_fan_out:
                self._merged_dora[name] = self._merged_dora[name].T
        super().merge(name)

    def unmerge_delta(self, name: str) -> dict[str, torch.Tensor]:
        done = self._merged_dora.pop(name, None)
        if done is None:
            return self.delta_weight(name)
        return {"weight": done.T if self.fan_in_fan_out else done, **self._bias_delta(name)}

    def export_state(self, name: str) -> dict[str, torch.Tensor]:
        state = super().export_state(name)
        if name in self.init_A:  # the plain rank-2r LoRA that PEFT's conversion writes
            state["lora_A.weight"] = torch.cat([state["lora_A.weight"], self.init_A[name].detach()], dim=0)
            state["lora_B.weight"] = torch.cat([state["lora_B.weight"], -self.init_B[name].detach()], dim=1)
        return state

    def import_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        if name in self.init_A:
            r = self.r[name]
            state = dict(state)
            a, b = state["lora_A.weight"], state["lora_B.weight"]
            with torch.no_grad():
                self.init_A[name].copy_(a[r:])
                self.init_B[name].copy_(-b[:, r:])
            state["lora_A.weight"], state["lora_B.weight"] = a[:r], b[:, :r]
        super().import_state(name, state)


def _start(init: str, weight: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    if init == "olora":
        return olora_init(weight, r)
    if init == "pissa":
        return pissa_init(weight, r, scaling, None)
    if init.startswith("pissa_niter_"):
        return pissa_init(weight, r, scaling, int(init.removeprefix("pissa_niter_")))
    return None


def _default_init(a: torch.Tensor, b: torch.Tensor, init: str, r: int) -> None:
    if init == "gaussian":
        nn.init.normal_(a, std=1.0 / r)
    else:
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    nn.init.zeros_(b)


class LoraEmbedding(_LoraBase):
    """LoRA beside an ``nn.Embedding``: a row lookup into A, then B (PEFT's lora_embedding_A / _B)."""

    own_children = frozenset({"lora_embedding_A", "lora_embedding_B", "bias_offsets"})

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        inner = tg.innermost(base_layer)
        self.num_embeddings, self.embedding_dim = _weight(inner).shape
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def add(self, name: str, cfg: LoraConfig, r: int, alpha: float, train_bias: bool) -> None:
        weight = _weight(tg.innermost(self.base_layer))
        a = torch.zeros(r, self.num_embeddings, device=weight.device, dtype=weight.dtype)  # (r, V)
        b = torch.empty(self.embedding_dim, r, device=weight.device, dtype=weight.dtype)  # (D, r)
        if cfg.init == "gaussian":
            nn.init.normal_(a, std=1.0 / r)
            nn.init.zeros_(b)
        else:
            nn.init.normal_(b)
        self.lora_embedding_A[name] = nn.Parameter(a)
        self.lora_embedding_B[name] = nn.Parameter(b)
        self._register(name, r, alpha, cfg.use_rslora, train_bias=False)

    def remove(self, name: str) -> None:
        del self.lora_embedding_A[name]
        del self.lora_embedding_B[name]
        self._forget(name)

    def adapter_parameters(self, name: str) -> dict[str, torch.Tensor]:
        return {"lora_embedding_A": self.lora_embedding_A[name], "lora_embedding_B": self.lora_embedding_B[name]}

    def delta(self, name: str, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        inner = tg.innermost(self.base_layer)
        after_a = F.embedding(x, self.lora_embedding_A[name].T, padding_idx=getattr(inner, "padding_idx", None))
        return (after_a @ self.lora_embedding_B[name].T) * self.scaling[name]  # (..., D)

    def delta_weight(self, name: str) -> dict[str, torch.Tensor]:
        ba = self.lora_embedding_B[name].detach().float() @ self.lora_embedding_A[name].detach().float()  # (D, V)
        return {"weight": ba.T * self.scaling[name]}
