"""Benchmark (issue 3): every slimtune method on CPU with SmolLM2-135M, batch 8 x 128, beside PEFT's version of it.

Per method and side: trainable parameters, median training step time (forward + backward + AdamW step), peak
RSS during training, adapter file size on disk (both sides save in the PEFT layout) and first / last loss.
Each (method, side) trains in its own fresh subprocess so that peak memory is honest; the two sides of a
method alternate which goes first (ABBA over the whole run). Methods PEFT lacks (bottleneck adapters,
BitFit, selective fine-tuning) are measured for slimtune only; BitFit is reported not applicable (SmolLM2
has no biases). Prints one markdown table and writes JSON to benchmarks/results/cpu_methods.json.

Peak RSS under glibc's default allocator also holds freed blocks it keeps for reuse, which depends on the
order of allocations and grows over the first steps; ``--memory-pass`` runs every worker again with a fixed
mmap threshold (freed blocks go back to the OS), whose peak follows the live tensors.

    python benchmarks/cpu_methods.py                        # the full run (1 warm-up, 3 timed steps, 1 round)
    python benchmarks/cpu_methods.py --methods lora,dora    # a subset
    python benchmarks/cpu_methods.py --quick                # a smoke run (1 warm-up, 1 step, a few methods)
    python benchmarks/cpu_methods.py --quick --methods all  # a smoke run of every method
    python benchmarks/cpu_methods.py --memory-pass          # the full run plus a memory pass (about 2x as long)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from torch import nn

import slimtune as st
from slimtune.embedded.models import load_smollm2

RESULTS = Path(__file__).parent / "results" / "cpu_methods.json"
SIDES = ("slimtune", "peft")
BATCH, SEQ, RANK, ALPHA, LR, WD, SEED = 8, 128, 16, 32, 1e-4, 0.01, 0
VIRTUAL_TOKENS, LORAPLUS_RATIO = 20, 16.0
IA3_TARGETS, IA3_FEEDFORWARD = ("k_proj", "v_proj", "down_proj"), ("down_proj",)
SAVED_BLOCK = "layers.29"  # the last of SmolLM2's 30 blocks, trained fully beside LoRA (modules_to_save)
WEIGHTS = "adapter_model.safetensors"
PINNED_MMAP_THRESHOLD, MEMORY_PASS_STEPS = 65536, 2  # the optional memory pass (--memory-pass)
NOOP_TOL = 1e-3  # first losses of the two sides, for methods whose fresh adapter is the base model exactly
MEM_TOL = 0.01  # peak memory "no worse" allows 1 % (page-level noise: a few MiB of 3-7 GiB); step time has none


# ----- the methods ------------------------------------------------------------------------------------------------
def _peft_lora(**kw: Any) -> peft.LoraConfig:
    return peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM", **kw)


def _peft_ia3() -> peft.IA3Config:
    return peft.IA3Config(
        target_modules=list(IA3_TARGETS), feedforward_modules=list(IA3_FEEDFORWARD), task_type="CAUSAL_LM"
    )


@dataclass(frozen=True)
class Method:
    slimtune: Callable[[], st.AdapterConfig]
    peft: Callable[[], Any] | None = None  # None: PEFT has no such method
    loraplus: bool = False  # LoRA+ optimizer groups on both sides
    converts: bool = False  # PiSSA / OLoRA: PEFT saves converted to plain LoRA, as slimtune does
    noop_start: bool = True  # a fresh adapter computes exactly the base model, on both sides
    not_applicable: str | None = None  # why slimtune is expected to refuse it on SmolLM2 (reported, not a failure)


def _lora(**kw: Any) -> Callable[[], st.AdapterConfig]:
    return lambda: st.LoraConfig(r=RANK, alpha=ALPHA, targets="all-linear", **kw)


METHODS: dict[str, Method] = {
    "lora": Method(_lora(), lambda: _peft_lora()),
    "dora": Method(_lora(use_dora=True), lambda: _peft_lora(use_dora=True)),
    "pissa": Method(_lora(init="pissa"), lambda: _peft_lora(init_lora_weights="pissa"), converts=True),
    "olora": Method(_lora(init="olora"), lambda: _peft_lora(init_lora_weights="olora"), converts=True),
    "loraplus": Method(_lora(), lambda: _peft_lora(), loraplus=True),
    "modules_to_save": Method(_lora(modules_to_save=(SAVED_BLOCK,)), lambda: _peft_lora(modules_to_save=[SAVED_BLOCK])),
    "ia3": Method(lambda: st.IA3Config(targets=IA3_TARGETS, feedforward=IA3_FEEDFORWARD), _peft_ia3),
    "prompt": Method(
        lambda: st.PromptTuningConfig(num_virtual_tokens=VIRTUAL_TOKENS),
        lambda: peft.PromptTuningConfig(num_virtual_tokens=VIRTUAL_TOKENS, task_type="CAUSAL_LM"),
        noop_start=False,
    ),
    "prefix": Method(
        lambda: st.PrefixTuningConfig(num_virtual_tokens=VIRTUAL_TOKENS),
        lambda: peft.PrefixTuningConfig(num_virtual_tokens=VIRTUAL_TOKENS, task_type="CAUSAL_LM"),
        noop_start=False,
    ),
    "houlsby": Method(lambda: st.BottleneckConfig(kind="houlsby")),
    "pfeiffer": Method(lambda: st.BottleneckConfig(kind="pfeiffer")),
    "bitfit": Method(lambda: st.BitFitConfig(), not_applicable="SmolLM2 (Llama) has no bias terms"),
    "selective": Method(lambda: st.SelectiveConfig(last_k=2)),
}
QUICK_METHODS = ("lora", "ia3", "prompt", "pfeiffer")


def _sides(method: str) -> tuple[str, ...]:
    return SIDES if METHODS[method].peft is not None else SIDES[:1]


# ----- helpers shared by the workers -------------------------------------------------------------------------------
from procmem import _hwm_mib, _maxrss_mib, _reset_hwm, _rss_mib, _threads, alternate, machine  # noqa: E402  (benchmarks/ helpers)


def _input_ids(vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(SEED)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=gen)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----- training worker (one method and side per fresh process) ----------------------------------------------------
def _adapt(method: str, side: str, base: nn.Module) -> nn.Module:
    spec = METHODS[method]
    if side == "slimtune":
        return st.adapt(base, spec.slimtune())
    assert spec.peft is not None
    return peft.get_peft_model(base, spec.peft())


def _optimizer(method: str, side: str, model: nn.Module) -> torch.optim.Optimizer:
    if not METHODS[method].loraplus:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WD)
    if side == "slimtune":
        from slimtune.train.config import TrainConfig
        from slimtune.train.optim import build_optimizer

        return build_optimizer(model, TrainConfig(steps=1, lr=LR, weight_decay=WD, loraplus_lr_ratio=LORAPLUS_RATIO))
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,  # type: ignore[arg-type]
        torch.optim.AdamW,
        lr=LR,
        loraplus_lr_ratio=LORAPLUS_RATIO,
        weight_decay=WD,
        loraplus_weight_decay=WD,
    )


def _save_initial(pm: Any, directory: Path) -> None:
    """PEFT's recipe for PiSSA / OLoRA: save the adapter as initialised, to convert against it at the end."""
    cfg = pm.peft_config["default"]
    init, cfg.init_lora_weights = cfg.init_lora_weights, True
    pm.save_pretrained(str(directory))
    cfg.init_lora_weights = init


def _save(method: str, side: str, model: Any, out: Path, initial: Path) -> None:
    if side == "slimtune":
        model.save_adapter(out)
    elif METHODS[method].converts:
        model.save_pretrained(str(out), path_initial_model_for_weight_conversion=str(initial))
    else:
        model.save_pretrained(str(out))


def _loss(side: str, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Each library's training loss as its trainer computes it: slimtune's Trainer takes kernels.lm_loss (the
    head on target positions only, chunked; the model's own loss where that does not apply, as for prompt and
    prefix tuning), PEFT under the HF Trainer the model's outputs.loss."""
    if side == "slimtune":
        from slimtune import kernels

        return kernels.causal_lm_loss(model, ids, ids)
    return model(input_ids=ids, labels=ids).loss


def _step(side: str, model: nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    """One AdamW step; returns its loss."""
    loss = _loss(side, model, ids)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _train(side: str, model: nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor,
           n: int) -> tuple[list[float], list[float]]:
    times, losses = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        losses.append(_step(side, model, opt, ids))
        times.append(time.perf_counter() - t0)
    return times, losses


def train_worker(method: str, side: str, warmup: int, steps: int) -> dict[str, Any]:
    """Time ``steps`` AdamW steps after ``warmup`` ones; memory is read from this (fresh) process."""
    _threads()
    torch.manual_seed(SEED)
    base, _ = load_smollm2()
    gc.collect()
    rss_loaded, maxrss_loaded = _rss_mib(), _maxrss_mib()
    hwm_reset = _reset_hwm()
    t0 = time.perf_counter()
    model = _adapt(method, side, base)
    adapt_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        initial, out = Path(tmp, "initial"), Path(tmp, "adapter")
        if side == "peft" and METHODS[method].converts:
            _save_initial(model, initial)
        model.train()
        opt = _optimizer(method, side, model)
        trainable = sum(p.numel() for g in opt.param_groups for p in g["params"])
        ids = _input_ids(base.config.vocab_size)
        times, losses = _train(side, model, opt, ids, warmup + steps)
        peak, hwm = _maxrss_mib(), _hwm_mib() if hwm_reset else None
        t0 = time.perf_counter()
        _save(method, side, model, out, initial)
        save_s = time.perf_counter() - t0
        file_bytes, dir_bytes = (out / WEIGHTS).stat().st_size, _dir_bytes(out)
    return {
        "method": method,
        "side": side,
        "trainable_params": trainable,
        "model_trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "step_s": times[warmup:],
        "warmup_step_s": times[:warmup],
        "step_median_s": statistics.median(times[warmup:]),
        "losses": losses,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "adapt_s": adapt_s,
        "save_s": save_s,
        "adapter_file_bytes": file_bytes,
        "adapter_dir_bytes": dir_bytes,
        "rss_after_load_mib": rss_loaded,
        "maxrss_after_load_mib": maxrss_loaded,
        "maxrss_mib": peak,
        "peak_rss_since_load_mib": hwm,
        # VmHWM after the reset is the peak of adapting and training alone; ru_maxrss also holds loading's peak
        "peak_rss_mib": hwm if hwm is not None else peak,
        "train_overhead_mib": (hwm if hwm is not None else peak) - rss_loaded,
    }


# ----- interleaved worker (one method, both sides in one process, steps alternated) ---------------------------------
def interleaved_worker(method: str, warmup: int, steps: int) -> dict[str, Any]:
    """Both sides of ``method`` train in this one process, one step each in turn, so that the machine's load
    over the run slows both alike (fresh-process step times on a 2-core VM move by 10-30 %): the step-time ratio
    the check reads when this phase ran."""
    _threads()
    torch.manual_seed(SEED)
    models = {side: _adapt(method, side, load_smollm2()[0]) for side in SIDES}
    opts = {}
    for side, model in models.items():
        model.train()
        opts[side] = _optimizer(method, side, model)
    ids = _input_ids(models["peft"].config.vocab_size)  # type: ignore[union-attr]
    return {"method": method, **alternate(lambda side: _step(side, models[side], opts[side], ids), SIDES, warmup,
                                          steps)}


# ----- driver --------------------------------------------------------------------------------------------------------
def _spawn(args: list[str], pinned: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    env = dict(os.environ)
    if pinned:  # a fixed threshold turns glibc's dynamic one off: freed large blocks go back to the OS at once
        env["MALLOC_MMAP_THRESHOLD_"] = str(PINNED_MMAP_THRESHOLD)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}", "stderr_tail": proc.stderr[-4000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _order(methods: list[str], rounds: int) -> list[tuple[int, str, str]]:
    """(round, method, side): the two sides of a method alternate which goes first, over methods and rounds."""
    order, flip = [], False
    for r in range(rounds):
        for m in methods:
            sides = _sides(m)
            if len(sides) == 2:
                sides, flip = (sides[::-1] if flip else sides), not flip
            order += [(r, m, s) for s in sides]
    return order


def _progress(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"    FAILED: {res['error']}"
    return (
        f"    {res['trainable_params']:,} trainable, steps {[round(t, 2) for t in res['step_s']]} s, "
        f"peak {res['peak_rss_mib']:.0f} MiB (+{res['train_overhead_mib']:.0f}), "
        f"file {res['adapter_file_bytes'] / 2**20:.2f} MiB, loss {res['first_loss']:.3f} -> {res['last_loss']:.3f}, "
        f"loadavg {os.getloadavg()[0]:.2f}"
    )


Raw = dict[str, dict[str, list[dict[str, Any]]]]


def _run_pass(methods: list[str], rounds: int, warmup: int, steps: int, pinned: bool) -> Raw:
    raw: Raw = {m: {s: [] for s in _sides(m)} for m in methods}
    order = _order(methods, rounds)
    label = "memory pass (pinned mmap threshold)" if pinned else "round"
    for i, (r, method, side) in enumerate(order):
        print(f"  [{i + 1}/{len(order)}] {label} {r + 1}/{rounds}: {method} / {side}", flush=True)
        args = ["--worker", f"{method}:{side}", "--warmup", str(warmup), "--steps", str(steps)]
        res = _spawn(args, pinned)
        print(_progress(res), flush=True)
        raw[method][side].append(res)
    return raw


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"], "runs": runs}
    med = statistics.median
    keys = ("peak_rss_mib", "train_overhead_mib", "maxrss_mib", "rss_after_load_mib", "adapt_s", "save_s")
    out: dict[str, Any] = {k: med(r[k] for r in ok) for k in keys}
    out["step_median_s"] = med(t for r in ok for t in r["step_s"])
    for k in ("trainable_params", "adapter_file_bytes", "adapter_dir_bytes", "first_loss", "last_loss"):
        out[k] = ok[0][k]
    return {**out, "runs": runs}


def _pinned(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak memory of the memory pass: glibc returns freed blocks at once, so RSS follows the live tensors."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"], "runs": runs}
    med = statistics.median
    return {k: med(r[k] for r in ok) for k in ("peak_rss_mib", "train_overhead_mib")} | {"runs": runs}


def _compare(method: str, s: dict[str, Any], p: dict[str, Any] | None,
             inter: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ratios slimtune / PEFT and the checks; empty where PEFT lacks the method or a side failed. The step-time
    check reads the interleaved phase where it ran (both sides in one process), else the fresh processes."""
    if p is None or "error" in s or "error" in p:
        return {}
    keys = ("step_median_s", "peak_rss_mib", "train_overhead_mib", "adapter_file_bytes")
    ratios = {k: s[k] / p[k] if p[k] else None for k in keys}
    step_ratio = ratios["step_median_s"]
    if inter is not None and "error" not in inter:
        ratios["interleaved_step"] = step_ratio = inter["ratio_of_medians"]
        ratios["interleaved_step_cpu"] = inter["cpu_ratio_of_medians"]
    checks = {
        "trainable_params_agree": s["trainable_params"] == p["trainable_params"],
        "step_time_no_worse": step_ratio is not None and step_ratio <= 1.0,
        "peak_memory_no_worse": s["peak_rss_mib"] <= p["peak_rss_mib"] * (1 + MEM_TOL),
        "file_no_larger": s["adapter_file_bytes"] <= p["adapter_file_bytes"],
    }
    sp, pp = s.get("pinned", {}), p.get("pinned", {})
    if "peak_rss_mib" in sp and "peak_rss_mib" in pp:
        ratios["pinned_peak_rss_mib"] = sp["peak_rss_mib"] / pp["peak_rss_mib"]
        checks["pinned_peak_memory_no_worse"] = sp["peak_rss_mib"] <= pp["peak_rss_mib"] * (1 + MEM_TOL)
    if METHODS[method].noop_start:
        checks["first_loss_agrees"] = abs(s["first_loss"] - p["first_loss"]) <= NOOP_TOL
    return {"ratios_slimtune_over_peft": ratios, "checks": checks}


def _cells(d: dict[str, Any] | None, memory_pass: bool) -> list[str]:
    n = 7 if memory_pass else 6
    if d is None:
        return ["-"] * n
    if "not_applicable" in d:
        return [f"n/a: {d['not_applicable']}"] + [""] * (n - 1)
    if "error" in d:
        return ["failed"] + [""] * (n - 1)
    pinned = d.get("pinned", {})
    cells = [
        f"{d['trainable_params']:,}",
        f"{d['step_median_s']:.2f}",
        f"{d['peak_rss_mib']:.0f}",
        f"{d['train_overhead_mib']:.0f}",
        *([f"{pinned['peak_rss_mib']:.0f}" if "peak_rss_mib" in pinned else "failed"] if memory_pass else []),
        f"{d['adapter_file_bytes'] / 2**20:.3f}",
        f"{d['first_loss']:.3f} → {d['last_loss']:.3f}",
    ]
    return cells


def _ratio_cells(entry: dict[str, Any], memory_pass: bool) -> list[str]:
    ratios = entry["ratios_slimtune_over_peft"]

    def fmt(key: str) -> str:
        return f"{ratios[key]:.3f}" if ratios.get(key) is not None else "n/a"

    agree = "agree" if entry["checks"]["trainable_params_agree"] else "DIFFER"
    pinned = [fmt("pinned_peak_rss_mib")] if memory_pass else []
    step = fmt("step_median_s")
    if ratios.get("interleaved_step") is not None:
        step += f" (one process: {fmt('interleaved_step')})"
    return [agree, step, fmt("peak_rss_mib"), fmt("train_overhead_mib"), *pinned, fmt("adapter_file_bytes"), ""]


def _table(summary: dict[str, dict[str, Any]], memory_pass: bool) -> str:
    head = ["method", "side", "trainable", "step s", "peak RSS MiB", "adapt+train MiB"]
    head += [*(["pinned peak MiB"] if memory_pass else []), "file MiB", "loss first → last"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, entry in summary.items():
        lines.append("| " + " | ".join([method, "slimtune", *_cells(entry["slimtune"], memory_pass)]) + " |")
        lines.append("| " + " | ".join(["", "peft", *_cells(entry.get("peft"), memory_pass)]) + " |")
        if entry.get("ratios_slimtune_over_peft"):
            lines.append("| " + " | ".join(["", "ratio", *_ratio_cells(entry, memory_pass)]) + " |")
    return "\n".join(lines)


def _failures(summary: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for method, entry in summary.items():
        failed = [k for k, v in entry.get("checks", {}).items() if not v]
        failed += [
            f"{side} failed: {d['error']}"
            for side in SIDES
            if "error" in (d := entry.get(side) or {}) and "not_applicable" not in d
        ]
        if failed:
            out[method] = failed
    return out


def _summary(methods: list[str], raw: Raw, mem: Raw | None,
             inter: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for method in methods:
        entry: dict[str, Any] = {"peft": None}
        for side in _sides(method):
            d = _summarise(raw[method][side])
            if "error" in d and METHODS[method].not_applicable:
                d["not_applicable"] = METHODS[method].not_applicable  # the refusal is in d["error"]
            if mem is not None and method in mem and "error" not in d:
                d["pinned"] = _pinned(mem[method][side])
            entry[side] = d
        summary[method] = {**entry, **_compare(method, entry["slimtune"], entry["peft"], inter.get(method))}
    return summary


def _interleaved_pass(methods: list[str], warmup: int, steps: int) -> dict[str, dict[str, Any]]:
    out = {}
    for method in (m for m in methods if len(_sides(m)) == 2):
        print(f"  interleaved {method} ({warmup} warm-up + {steps} steps per side)", flush=True)
        res = _spawn(["--worker", f"interleaved:{method}", "--warmup", str(warmup), "--steps", str(steps)])
        if "error" not in res:
            print(f"    slimtune / PEFT step {res['ratio_of_medians']:.3f} "
                  f"(CPU time {res['cpu_ratio_of_medians']:.3f}), medians {res['step_median_s']}, "
                  f"loadavg {os.getloadavg()[0]:.2f}", flush=True)
        else:
            print(f"    FAILED: {res['error']}", flush=True)
        out[method] = res
    return out


def run(ns: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()
    t0 = time.time()
    raw = _run_pass(ns.methods, ns.rounds, ns.warmup, ns.steps, pinned=False)
    inter = _interleaved_pass(ns.methods, ns.warmup, ns.interleaved_steps) if ns.interleaved_steps else {}
    mem = None
    if ns.memory_pass:
        measurable = [m for m in ns.methods if not METHODS[m].not_applicable]
        mem = _run_pass(measurable, 1, 0, MEMORY_PASS_STEPS, pinned=True)
    summary = _summary(ns.methods, raw, mem, inter)
    table = _table(summary, ns.memory_pass)
    result = {
        "benchmark": "cpu_methods",
        "issue": 3,
        "machine": {**machine(), "torch_threads": _threads()},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "slimtune": st.__version__,
        },
        "settings": {
            "model": "SmolLM2-135M-Instruct",
            "dtype": "float32",
            "batch": BATCH,
            "seq": SEQ,
            "labels": "input_ids",
            "optimizer": "AdamW",
            "lr": LR,
            "weight_decay": WD,
            "seed": SEED,
            "lora_r": RANK,
            "lora_alpha": ALPHA,
            "lora_targets": "all-linear",
            "loraplus_lr_ratio": LORAPLUS_RATIO,
            "modules_to_save": [SAVED_BLOCK],
            "ia3_targets": list(IA3_TARGETS),
            "ia3_feedforward": list(IA3_FEEDFORWARD),
            "virtual_tokens": VIRTUAL_TOKENS,
            "bottleneck_reduction_factor": 16,
            "selective": "last 2 blocks",
            "warmup": ns.warmup,
            "steps": ns.steps,
            "rounds": ns.rounds,
            "interleaved_steps": ns.interleaved_steps,
            "methods": ns.methods,
            "quick": ns.quick,
            "memory_pass": {"MALLOC_MMAP_THRESHOLD_": PINNED_MMAP_THRESHOLD, "steps": MEMORY_PASS_STEPS}
            if ns.memory_pass
            else None,
            "peak_rss": "VmHWM after a reset once the model is loaded (adapting + training); file: safetensors bytes",
            "memory_tolerance": MEM_TOL,
        },
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "wall_s": time.time() - t0,
        "interleaved": inter,
        "methods": summary,
        "failed_checks": _failures(summary),
        "table_md": table,
    }
    print(table)
    print("failed checks:", json.dumps(result["failed_checks"], indent=1, ensure_ascii=False))
    print(f"loadavg start {load_start}, end {result['loadavg_end']}, wall {result['wall_s']:.0f} s")
    return result


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=1, help="untimed training steps per worker")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per worker")
    ap.add_argument("--rounds", type=int, default=1, help="workers per method and side, alternated ABBA")
    ap.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}, or 'all'")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: 1 warm-up, 1 step, 1 round, {QUICK_METHODS}")
    ap.add_argument(
        "--memory-pass",
        action="store_true",
        help=f"also run every worker again with MALLOC_MMAP_THRESHOLD_={PINNED_MMAP_THRESHOLD} "
        f"({MEMORY_PASS_STEPS} steps): peak RSS that follows the live tensors rather than glibc's caching of freed "
        "blocks (that run's step times are not used: returning every block to the OS slows steps down)",
    )
    ap.add_argument("--interleaved-steps", type=int, default=0,
                    help="also time each shared method with both sides in one process, this many steps per side "
                         "alternated (the step-time check then reads that ratio)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.quick:
        ns.warmup, ns.steps, ns.rounds = 1, 1, 1
        ns.interleaved_steps = min(ns.interleaved_steps, 1)
    if ns.methods in (None, "all"):
        ns.methods = list(QUICK_METHODS if ns.quick and ns.methods is None else METHODS)
    else:
        ns.methods = [m.strip() for m in ns.methods.split(",") if m.strip()]
    unknown = [m for m in ns.methods if m not in METHODS]
    if unknown or ns.steps < 1 or ns.warmup < 0 or ns.rounds < 1:
        ap.error(f"unknown methods {unknown}" if unknown else "need --steps >= 1, --warmup >= 0, --rounds >= 1")
    return ns


def main() -> None:
    ns = _parse()
    if ns.worker:
        kind, name = ns.worker.split(":")
        result = interleaved_worker(name, ns.warmup, ns.steps) if kind == "interleaved" else \
            train_worker(kind, name, ns.warmup, ns.steps)
        print(json.dumps(result))
        return
    result = run(ns)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
