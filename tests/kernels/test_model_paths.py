"""Whole models through slimtune's layers: the fast paths give the reference path's outputs and gradients."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import slimtune as st
from slimtune import kernels
from tests.conftest import randomize_adapters, tiny_llama

FP32 = {"atol": 1e-5, "rtol": 1e-4}
BF16_REL = 2e-2  # ||fast - ref|| / ||ref|| for bf16 on the GPU


def _adapted(cfg: st.LoraConfig, device: str = "cpu", dtype: torch.dtype = torch.float32) -> st.AdaptedModel:
    model = st.adapt(tiny_llama(), cfg)
    randomize_adapters(model)  # on the CPU: its noise comes from a CPU generator
    return model.to(device=device, dtype=dtype)


def _loss_and_grads(model: st.AdaptedModel, ids: torch.Tensor, fast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with kernels.fast_paths(fast):
        model.zero_grad(set_to_none=True)
        loss = kernels.causal_lm_loss(model, ids, ids, fast=fast)
        loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.trainable_parameters()]


def _ids(device: str = "cpu", batch: int = 3, seq: int = 11) -> torch.Tensor:
    return torch.randint(1, 256, (batch, seq), generator=torch.Generator().manual_seed(5)).to(device)


CASES: dict[str, Callable[[], st.LoraConfig]] = {
    "lora": lambda: st.LoraConfig(r=4, alpha=8),
    "lora_qv": lambda: st.LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj")),
    "dora": lambda: st.LoraConfig(r=4, alpha=8, use_dora=True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("recompute", [False, True])
def test_training_fast_equals_reference(case: str, recompute: bool) -> None:
    model = _adapted(CASES[case]()).train()
    kernels.set_dora_recompute(recompute)
    try:
        ref_loss, ref_grads = _loss_and_grads(model, _ids(), fast=False)
        loss, grads = _loss_and_grads(model, _ids(), fast=True)
    finally:
        kernels.set_dora_recompute(False)
    torch.testing.assert_close(loss, ref_loss, **FP32)
    assert len(grads) == len(ref_grads) > 0
    for got, want in zip(grads, ref_grads, strict=True):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, **FP32)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


@pytest.mark.parametrize("case", ["lora", "dora"])
def test_autocast_fast_path_runs_in_autocast_dtype(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 weights under bf16 autocast (the trainer's default on a GPU): the fast path casts and runs,
    giving the reference path's loss and float32 gradients to bf16 accuracy."""
    model = _adapted(CASES[case]()).train()
    calls: list[torch.dtype] = []
    name = "dora_linear" if case == "dora" else "lora_linear"
    real = getattr(kernels, name)

    def spy(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(x.dtype)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(kernels, name, spy)
    exact_loss, exact_grads = _loss_and_grads(model, _ids(), fast=False)  # float32 throughout
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref_grads = _loss_and_grads(model, _ids(), fast=False)
        assert not calls
        loss, grads = _loss_and_grads(model, _ids(), fast=True)
    assert calls and set(calls) == {torch.bfloat16}
    # the fast path's error against float32 is of the size of the autocast reference path's own: over all
    # gradients together within 2x of it, and per tensor within 2x of it or of bfloat16's epsilon (2^-7; two
    # orders of bf16 rounding differ per tensor by 2x by chance: 0.0128 vs 0.0063 for one of 28 LoRA tensors)
    assert abs(loss - exact_loss) <= max(3 * abs(ref_loss - exact_loss).item(), 1e-3 * abs(exact_loss).item())
    assert all(g.dtype == torch.float32 for g in grads) and all(e.abs().sum() > 0 for e in exact_grads)
    assert _rel(torch.cat([g.flatten() for g in grads]), torch.cat([e.flatten() for e in exact_grads])) <= 2 * _rel(
        torch.cat([r.flatten() for r in ref_grads]), torch.cat([e.flatten() for e in exact_grads]))
    eps = torch.finfo(torch.bfloat16).eps
    for got, ref, exact in zip(grads, ref_grads, exact_grads, strict=True):
        assert _rel(got, exact) <= 2 * max(_rel(ref, exact), eps)


def test_dropout_fast_path_gives_the_same_gradients_for_the_same_mask() -> None:
    model = _adapted(st.LoraConfig(r=4, alpha=8, dropout=0.3)).train()
    results = []
    for fast in (False, True):
        torch.manual_seed(11)  # one adapter input per layer, dropped in the same order on both paths
        results.append(_loss_and_grads(model, _ids(), fast=fast))
    torch.testing.assert_close(results[1][0], results[0][0], **FP32)
    for got, want in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(got, want, **FP32)


def test_inference_single_and_mixed_batches() -> None:
    model = _adapted(st.LoraConfig(r=4, alpha=8))
    for name, seed in (("second", 4), ("third", 6)):
        model.add_adapter(name, st.LoraConfig(r=2 if name == "second" else 6, alpha=8))
        randomize_adapters(model, seed=seed)
    model.eval()
    ids = _ids(batch=5)
    rows = ["second", None, "default", "third", "second"]
    with torch.no_grad():
        with kernels.fast_paths(False):
            ref_single = model(input_ids=ids).logits
            ref_mixed = model(input_ids=ids, adapter_names=rows).logits
        with kernels.fast_paths(True):
            single = model(input_ids=ids).logits
            mixed = model(input_ids=ids, adapter_names=rows).logits
    torch.testing.assert_close(single, ref_single, **FP32)
    torch.testing.assert_close(mixed, ref_mixed, **FP32)


def test_reference_only_layers_still_work_with_fast_on() -> None:
    model = _adapted(st.LoraConfig(r=4, alpha=8, init="olora"))
    with torch.no_grad(), kernels.fast_paths(True):
        fast = model(input_ids=_ids()).logits
    with torch.no_grad(), kernels.fast_paths(False):
        ref = model(input_ids=_ids()).logits
    torch.testing.assert_close(fast, ref, **FP32)


def test_causal_lm_loss_equals_model_loss() -> None:
    model = tiny_llama()
    ids = _ids()
    labels = ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        torch.testing.assert_close(kernels.causal_lm_loss(model, ids, labels), model(input_ids=ids, labels=labels).loss,
                                   **FP32)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_bf16_fast_is_as_close_to_float32_as_the_reference(case: str) -> None:
    exact = _adapted(CASES[case](), device="cuda").train()
    model = _adapted(CASES[case](), device="cuda", dtype=torch.bfloat16).train()
    ids = _ids("cuda", batch=4, seq=64)
    _, exact_grads = _loss_and_grads(exact, ids, fast=False)
    ref_loss, ref_grads = _loss_and_grads(model, ids, fast=False)
    loss, grads = _loss_and_grads(model, ids, fast=True)
    assert abs(loss.item() - ref_loss.item()) <= BF16_REL * abs(ref_loss.item())
    for got, ref, want in zip(grads, ref_grads, exact_grads, strict=True):
        assert _rel(got, want) <= max(2 * _rel(ref, want), BF16_REL)


@pytest.mark.gpu
def test_gpu_mixed_batch_bf16() -> None:
    model = _adapted(st.LoraConfig(r=4, alpha=8))
    model.add_adapter("other", st.LoraConfig(r=8, alpha=8))
    randomize_adapters(model, seed=8)
    model = model.to(device="cuda", dtype=torch.bfloat16).eval()
    ids = _ids("cuda", batch=4, seq=64)
    rows = ["other", "default", None, "other"]
    with torch.no_grad():
        with kernels.fast_paths(False):
            ref = model(input_ids=ids, adapter_names=rows).logits
        with kernels.fast_paths(True):
            got = model(input_ids=ids, adapter_names=rows).logits
    assert _rel(got, ref) <= BF16_REL


def test_module_is_nn_linear_base() -> None:
    model = _adapted(st.LoraConfig(r=4, alpha=8))
    layers = [m for _, m in model.adapter_layers()]
    assert layers and all(type(m.base_layer) is nn.Linear for m in layers)


def test_fused_model_blocks_match_unfused() -> None:
    model = _adapted(st.LoraConfig(r=4, alpha=8)).train()
    ref_loss, ref_grads = _loss_and_grads(model, _ids(), fast=True)
    assert kernels.fuse_model(model) == 7  # two layers of 2 norms and an MLP, and the final norm
    assert kernels.fuse_model(model) == 0  # idempotent
    loss, grads = _loss_and_grads(model, _ids(), fast=True)
    assert kernels.unfuse_model(model) == 7
    torch.testing.assert_close(loss, ref_loss, **FP32)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, **FP32)
    assert "forward" not in vars(model.model.model.norm)


@pytest.mark.gpu
def test_gpu_fused_blocks_bf16() -> None:
    model = _adapted(st.LoraConfig(r=4, alpha=8), device="cuda", dtype=torch.bfloat16).train()
    ids = _ids("cuda", batch=4, seq=64)
    ref_loss, ref_grads = _loss_and_grads(model, ids, fast=True)
    kernels.fuse_model(model)
    loss, grads = _loss_and_grads(model, ids, fast=True)
    kernels.unfuse_model(model)
    assert not kernels.fusions.fused_rms_norm.failed and not kernels.fusions.fused_swiglu.failed
    assert abs(loss.item() - ref_loss.item()) <= BF16_REL * abs(ref_loss.item())
    for got, want in zip(grads, ref_grads, strict=True):
        assert _rel(got, want) <= BF16_REL


def test_fast_path_follows_every_change_of_layer_state() -> None:
    """Each layer keeps its fast-path decision between calls: after every kind of state change it must
    still give what the reference path gives (no stale adapter, no stale tensor)."""
    model = _adapted(st.LoraConfig(r=4, alpha=8, dropout=0.2))
    model.add_adapter("second", st.LoraConfig(r=3, alpha=6, use_dora=True))
    randomize_adapters(model, seed=8)
    ids = _ids()

    def check(label: str) -> torch.Tensor:
        torch.manual_seed(3)
        with torch.no_grad(), kernels.fast_paths(True):
            fast = model(input_ids=ids).logits
        torch.manual_seed(3)
        with torch.no_grad(), kernels.fast_paths(False):
            ref = model(input_ids=ids).logits
        torch.testing.assert_close(fast, ref, **FP32, msg=lambda m: f"{label}: {m}")
        return fast

    model.eval()
    first = check("default adapter")
    model.set_active("second")
    assert not torch.allclose(check("switched to the DoRA adapter"), first)
    with model.disabled():
        check("disabled")
    model.set_active("default")
    model.train()
    check("training mode, dropout on")
    model.eval()
    model.merge(["default"])
    check("merged")
    model.unmerge()
    check("unmerged")  # each change below comes after a forward in the same state
    layer = next(m for m in model.modules() if isinstance(m, st.methods.lora_layers.LoraLinear))
    fresh = {k: torch.randn_like(v) for k, v in layer.lora_B["default"].state_dict().items()}
    layer.lora_B["default"].load_state_dict(fresh, assign=True)  # a new Parameter object
    assert not torch.allclose(check("parameter replaced"), first)
    model.delete_adapter("default")
    model.add_adapter("default", st.LoraConfig(r=2, alpha=4))
    randomize_adapters(model, seed=9)
    model.set_active("default")
    check("adapter deleted and added again")
    model.train()
    check("training again")
    layer.lora_dropout["default"] = nn.Dropout(0.5)  # a module swapped in place: no parameter registered
    check("dropout module swapped")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["lora", "dora"])
def test_compiled_blocks_give_the_eager_loss_and_gradients(case: str) -> None:
    """compile_blocks traces the LoRA / DoRA layers' custom autograd with no graph break."""
    import torch._dynamo.utils

    model = _adapted(CASES[case]()).train()
    want = _loss_and_grads(model, _ids(), fast=True)
    assert kernels.compile_blocks(model) == model.config.num_hidden_layers
    torch._dynamo.utils.counters.clear()
    got = _loss_and_grads(model, _ids(), fast=True)
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(got[0], want[0], **FP32)
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w, **FP32)


def test_mixed_batch_where_a_layer_holds_none_of_the_rows_adapters() -> None:
    model = _adapted(st.LoraConfig(r=4, alpha=8, targets=("q_proj",)))
    model.add_adapter("other", st.LoraConfig(r=2, alpha=4, targets=("v_proj",)))
    randomize_adapters(model, seed=12)
    model.eval()
    rows = ["default", None, "default"]
    with torch.no_grad():
        with kernels.fast_paths(False):
            want = model(input_ids=_ids(), adapter_names=rows).logits
        with kernels.fast_paths(True):
            got = model(input_ids=_ids(), adapter_names=rows).logits
    torch.testing.assert_close(got, want, **FP32)
