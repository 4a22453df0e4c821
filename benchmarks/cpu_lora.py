"""Benchmark (issue 2): slimtune's LoRA against PEFT on CPU with SmolLM2-135M, batch 8 x 128, r=16 on all linears.

Measures training step time and peak memory (each side's training in its own fresh subprocess, the sides
alternated ABBA), the training step time again with both sides in one process and their steps alternated (the
ratio the target reads: load drift hits both alike), and the forward time of the base model and of the merged
and unmerged adapter (both sides in one process, interleaved, after checking their logits agree). Prints one
table and writes JSON to benchmarks/results/cpu_lora.json.

    python benchmarks/cpu_lora.py            # the full run (2 warm-ups, 6 timed steps, 2 rounds per side)
    python benchmarks/cpu_lora.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from torch import nn

import slimtune as st
from slimtune.embedded.models import load_smollm2

RESULTS = Path(__file__).parent / "results" / "cpu_lora.json"
SIDES = ("slimtune", "peft")
BATCH, SEQ, RANK, ALPHA, LR, SEED = 8, 128, 16, 32, 1e-4, 0
# parity with PEFT: max |slimtune - PEFT| of the logits on slimtune's reference path (the same product order as
# PEFT's: exactly equal so far); the fused inference path's own deviation from it is reported beside, relative to
# the logits' scale (float32 rounding of another product order through 30 layers)
LOGITS_TOL = 1e-4
FUSED_REL_TOL = 1e-4


# ----- helpers shared by the workers ---------------------------------------------------------------------------
from procmem import _hwm_mib, _maxrss_mib, _reset_hwm, _rss_mib, _threads, alternate, machine  # noqa: E402  (benchmarks/ helpers)


def _input_ids(vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(SEED)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=gen)


def _adapt(side: str, model: nn.Module) -> nn.Module:
    if side == "slimtune":
        return st.adapt(model, st.LoraConfig(r=RANK, alpha=ALPHA, targets="all-linear"))
    return peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear"))


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _loss(side: str, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Each library's training loss as its trainer computes it: slimtune's Trainer takes kernels.lm_loss (the
    head on target positions only: here every position but the last), PEFT under the HF Trainer the model's
    own outputs.loss."""
    if side == "slimtune":
        from slimtune import kernels

        return kernels.causal_lm_loss(model, ids, ids)
    return model(input_ids=ids, labels=ids).loss


def _step(side: str, model: nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> torch.Tensor:
    loss = _loss(side, model, ids)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


# ----- training worker (one side per fresh process) ------------------------------------------------------------
def train_worker(side: str, warmup: int, steps: int) -> dict[str, Any]:
    """Time ``steps`` AdamW steps after ``warmup`` ones; memory is read from this (fresh) process."""
    _threads()
    torch.manual_seed(SEED)
    base, _ = load_smollm2()
    gc.collect()
    rss_loaded, maxrss_loaded = _rss_mib(), _maxrss_mib()
    hwm_reset = _reset_hwm()
    model = _adapt(side, base)
    model.train()
    params = _trainable(model)
    opt = torch.optim.AdamW(params, lr=LR)
    ids = _input_ids(base.config.vocab_size)
    times: list[float] = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = _step(side, model, opt, ids)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = _maxrss_mib()
    hwm = _hwm_mib() if hwm_reset else None
    return {
        "side": side, "step_s": times, "step_median_s": statistics.median(times), "loss": float(loss),
        "trainable_params": sum(p.numel() for p in params), "rss_after_load_mib": rss_loaded,
        "maxrss_after_load_mib": maxrss_loaded, "peak_rss_mib": peak, "train_overhead_mib": peak - rss_loaded,
        "peak_rss_since_load_mib": hwm, "train_overhead_since_load_mib": None if hwm is None else hwm - rss_loaded,
    }


# ----- interleaved training worker (both sides in one process, steps alternated) -------------------------------
def interleaved_worker(warmup: int, steps: int) -> dict[str, Any]:
    """Both sides train in this one process, one step each in turn (which goes first alternates), so that a
    change in the machine's load over the run slows both alike: the step-time ratio the target is read from.
    Also records each step's process CPU time (both threads), which a busy neighbour inflates less."""
    _threads()
    torch.manual_seed(SEED)
    models = {side: _adapt(side, load_smollm2()[0]) for side in SIDES}
    opts = {}
    for side, model in models.items():
        model.train()
        opts[side] = torch.optim.AdamW(_trainable(model), lr=LR)
    ids = _input_ids(models["peft"].config.vocab_size)  # type: ignore[union-attr]
    return alternate(lambda side: float(_step(side, models[side], opts[side], ids)), SIDES, warmup, steps)


# ----- forward worker (both sides in one process) --------------------------------------------------------------
def _copy_and_randomise(slim: st.AdaptedModel, pm: nn.Module) -> int:
    """Give slimtune's B random values and copy A and B into PEFT's layers; returns how many layers."""
    gen = torch.Generator().manual_seed(SEED + 1)
    layers = slim.adapter_layers("default")
    peft_paths = {n.removeprefix("base_model.model."): m for n, m in pm.named_modules() if hasattr(m, "lora_A")}
    if sorted(p for p, _ in layers) != sorted(peft_paths):
        raise RuntimeError("slimtune and PEFT adapted different modules")
    with torch.no_grad():
        for path, layer in layers:
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=gen) * 0.02)
            peft_paths[path].lora_A["default"].weight.copy_(layer.lora_A["default"].weight)
            peft_paths[path].lora_B["default"].weight.copy_(b)
    return len(layers)


def _timed(fn: Callable[[], torch.Tensor]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _logits_check(base: nn.Module, slim: st.AdaptedModel, pm: Any, ids: torch.Tensor) -> dict[str, float]:
    from slimtune import kernels

    with torch.inference_mode():
        lb, lp = base(input_ids=ids).logits, pm(input_ids=ids).logits
        lf = slim(input_ids=ids).logits  # the default (fused) inference path
        with kernels.fast_paths(False):
            ls = slim(input_ids=ids).logits
        slim.merge()
        pm.merge_adapter()
        ms, mp = slim(input_ids=ids).logits, pm(input_ids=ids).logits
        slim.unmerge()
        pm.unmerge_adapter()
    scale = float(lp.abs().max())
    return {"unmerged_max_abs_diff": float((ls - lp).abs().max()), "merged_max_abs_diff": float((ms - mp).abs().max()),
            "fused_vs_reference_rel": float((lf - ls).abs().max()) / max(scale, 1.0),
            "slimtune_merged_vs_unmerged": float((ms - ls).abs().max()),
            "adapter_vs_base_max_abs_diff": float((ls - lb).abs().max()), "logits_scale": scale}


def _forward_phase(runs: dict[str, nn.Module], ids: torch.Tensor, reps: int) -> dict[str, list[float]]:
    """Time each model ``reps`` times, rotating which goes first so that drift is shared."""
    names = list(runs)
    out: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for n in names:  # one warm-up each
            runs[n](input_ids=ids)
        for r in range(reps):
            for n in names[r % len(names):] + names[:r % len(names)]:
                out[n].append(_timed(lambda m=runs[n]: m(input_ids=ids).logits))
    return out


def forward_worker(reps: int) -> dict[str, Any]:
    _threads()
    torch.manual_seed(SEED)
    base, _ = load_smollm2()
    slim = _adapt("slimtune", load_smollm2()[0])
    pm = _adapt("peft", load_smollm2()[0])
    for m in (base, slim, pm):
        m.eval()
    layers = _copy_and_randomise(slim, pm)  # type: ignore[arg-type]
    ids = _input_ids(base.config.vocab_size)
    check = _logits_check(base, slim, pm, ids)  # type: ignore[arg-type]
    unmerged = _forward_phase({"base": base, "slimtune": slim, "peft": pm}, ids, reps)
    slim.merge()  # type: ignore[operator]
    pm.merge_adapter()  # type: ignore[operator]
    merged = _forward_phase({"base": base, "slimtune": slim, "peft": pm}, ids, reps)
    med = statistics.median
    return {
        "adapted_layers": layers, "logits_check": check, "unmerged_s": unmerged, "merged_s": merged,
        "base_median_s": med(unmerged["base"] + merged["base"]),
        "unmerged_median_s": {s: med(unmerged[s]) for s in SIDES},
        "merged_median_s": {s: med(merged[s]) for s in SIDES},
        # each side's overhead is over the base timings of the same phase
        "unmerged_over_base": {s: med(unmerged[s]) / med(unmerged["base"]) for s in SIDES},
        "merged_over_base": {s: med(merged[s]) / med(merged["base"]) for s in SIDES},
    }


# ----- driver ----------------------------------------------------------------------------------------------------
def _spawn(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _train_all(ns: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    for r in range(ns.rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:  # ABBA, so a trend in load hits both alike
            print(f"  train round {r + 1}/{ns.rounds}: {side}", flush=True)
            args = ["--worker", f"{side}-train", "--warmup", str(ns.warmup), "--steps", str(ns.steps)]
            res = _spawn(args)
            print(f"    steps {[round(t, 2) for t in res['step_s']]} s, peak RSS {res['peak_rss_mib']:.0f} MiB, "
                  f"overhead {res['train_overhead_mib']:.0f} MiB, loadavg {os.getloadavg()[0]:.2f}", flush=True)
            out[side].append(res)
    return out


def _summarise_train(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = statistics.median
    keys = ("peak_rss_mib", "train_overhead_mib", "peak_rss_since_load_mib", "train_overhead_since_load_mib",
            "rss_after_load_mib")
    summary = {k: med(r[k] for r in runs) if all(r[k] is not None for r in runs) else None for k in keys}
    summary["step_median_s"] = med(t for r in runs for t in r["step_s"])
    summary["trainable_params"] = runs[0]["trainable_params"]
    return {**summary, "runs": runs}


def _ratios(train: dict[str, dict[str, Any]], fwd: dict[str, Any]) -> dict[str, float | None]:
    s, p = train["slimtune"], train["peft"]
    out: dict[str, float | None] = {k: (s[k] / p[k] if s[k] is not None and p[k] else None)
                                    for k in ("step_median_s", "peak_rss_mib", "train_overhead_mib",
                                              "train_overhead_since_load_mib")}
    for phase in ("unmerged_median_s", "merged_median_s"):
        out[f"forward_{phase}"] = fwd[phase]["slimtune"] / fwd[phase]["peft"]
    out["unmerged_overhead"] = fwd["unmerged_over_base"]["slimtune"] / fwd["unmerged_over_base"]["peft"]
    return out


def _targets(train: dict[str, dict[str, Any]], fwd: dict[str, Any], inter: dict[str, Any]) -> dict[str, bool]:
    s, p = train["slimtune"], train["peft"]
    return {
        "step_time_no_worse": inter["ratio_of_medians"] <= 1.0,
        "peak_memory_no_worse": s["peak_rss_mib"] <= p["peak_rss_mib"],
        "unmerged_overhead_at_most_peft": fwd["unmerged_over_base"]["slimtune"] <= fwd["unmerged_over_base"]["peft"],
        "logits_agree": max(fwd["logits_check"]["unmerged_max_abs_diff"],
                            fwd["logits_check"]["merged_max_abs_diff"]) <= LOGITS_TOL,
        "fused_path_close": fwd["logits_check"]["fused_vs_reference_rel"] <= FUSED_REL_TOL,
    }


def _row(label: str, s: float | None, p: float | None, unit: str) -> str:
    if s is None or p is None:
        return f"{label:<38}{'n/a':>12}{'n/a':>12}"
    return f"{label:<38}{s:>10.3f}{unit:>2}{p:>10.3f}{unit:>2}{s / p:>10.3f}"


def _table(train: dict[str, dict[str, Any]], fwd: dict[str, Any], inter: dict[str, Any]) -> str:
    s, p = train["slimtune"], train["peft"]
    ub = fwd["unmerged_over_base"]
    si, pi = inter["step_median_s"], inter["step_cpu_median_s"]
    lines = [
        f"{'':<38}{'slimtune':>12}{'peft':>12}{'ratio':>10}",
        _row("train step, interleaved, median", si["slimtune"], si["peft"], " s"),
        _row("  its CPU time (2 threads), median", pi["slimtune"], pi["peft"], " s"),
        _row("train step, fresh processes, median", s["step_median_s"], p["step_median_s"], " s"),
        _row("peak RSS (ru_maxrss)", s["peak_rss_mib"] / 1024, p["peak_rss_mib"] / 1024, "Gi"),
        _row("RSS after load -> peak (overhead)", s["train_overhead_mib"], p["train_overhead_mib"], "Mi"),
        _row("peak since load (VmHWM) - load RSS", s["train_overhead_since_load_mib"],
             p["train_overhead_since_load_mib"], "Mi"),
        _row("forward base, median", fwd["base_median_s"], fwd["base_median_s"], " s"),
        _row("forward merged, median", fwd["merged_median_s"]["slimtune"], fwd["merged_median_s"]["peft"], " s"),
        _row("forward unmerged, median", fwd["unmerged_median_s"]["slimtune"], fwd["unmerged_median_s"]["peft"], " s"),
        _row("unmerged / base", ub["slimtune"], ub["peft"], " x"),
        _row("merged / base", fwd["merged_over_base"]["slimtune"], fwd["merged_over_base"]["peft"], " x"),
    ]
    chk = fwd["logits_check"]
    lines.append(f"logits max|slimtune-peft|: unmerged {chk['unmerged_max_abs_diff']:.2e}, merged "
                 f"{chk['merged_max_abs_diff']:.2e} (tol {LOGITS_TOL:g}); fused path vs reference "
                 f"{chk['fused_vs_reference_rel']:.2e} of the logits' scale (tol {FUSED_REL_TOL:g}); adapter vs base "
                 f"{chk['adapter_vs_base_max_abs_diff']:.2e}")
    return "\n".join(lines)


def run(ns: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()
    t0 = time.time()
    raw = _train_all(ns)
    print("  training, both sides in one process, steps alternated", flush=True)
    inter = _spawn(["--worker", "interleaved", "--warmup", str(ns.warmup), "--steps", str(ns.interleaved_steps)])
    print(f"    slimtune {[round(t, 2) for t in inter['step_s']['slimtune']]} s", flush=True)
    print(f"    peft     {[round(t, 2) for t in inter['step_s']['peft']]} s", flush=True)
    print("  forward (both sides, one process)", flush=True)
    fwd = _spawn(["--worker", "forward", "--reps", str(ns.reps)])
    train = {s: _summarise_train(raw[s]) for s in SIDES}
    result = {
        "benchmark": "cpu_lora", "issue": 2, "machine": {**machine(), "torch_threads": _threads()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "slimtune": st.__version__},
        "settings": {"model": "SmolLM2-135M-Instruct", "dtype": "float32", "batch": BATCH, "seq": SEQ, "r": RANK,
                     "alpha": ALPHA, "targets": "all-linear", "optimizer": "AdamW", "lr": LR, "seed": SEED,
                     "warmup": ns.warmup, "steps": ns.steps, "rounds": ns.rounds, "forward_reps": ns.reps,
                     "quick": ns.quick},
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "wall_s": time.time() - t0,
        "train": train, "interleaved_train": inter, "forward": fwd,
        "ratios_slimtune_over_peft": {**_ratios(train, fwd), "interleaved_step": inter["ratio_of_medians"],
                                      "interleaved_step_cpu": inter["cpu_ratio_of_medians"]},
        "targets_met": _targets(train, fwd, inter),
        "notes": ["step time: the target reads the interleaved phase (both sides in one process, steps alternated, "
                  "so load drift is shared); the fresh-process medians beside it also carry each process's own "
                  "luck with the machine's load, and measure the memory",
                  "slimtune's step takes slimtune's training loss (kernels.lm_loss, as its Trainer does); PEFT's "
                  "takes the model's outputs.loss (as the HF Trainer does)",
                  "on the CPU slimtune's LoRA training path runs the same ops as PEFT's (checked with "
                  "torch.profiler: same counts of mm, mul, add): differences in step time are small and noisy"],
    }
    print(_table(train, fwd, inter))
    print("targets met:", json.dumps(result["targets_met"]))
    print(f"loadavg start {load_start}, end {result['loadavg_end']}")
    return result


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=2, help="untimed training steps per worker")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per worker")
    ap.add_argument("--rounds", type=int, default=2, help="training workers per side, alternated ABBA")
    ap.add_argument("--reps", type=int, default=5, help="timed forwards per model and phase")
    ap.add_argument("--interleaved-steps", type=int, default=8,
                    help="timed steps per side in the one-process phase (steps alternated)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up, 2 steps, 1 round, 2 reps")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", choices=[f"{s}-train" for s in SIDES] + ["forward", "interleaved"],
                    help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.quick:
        ns.warmup, ns.steps, ns.rounds, ns.reps, ns.interleaved_steps = 1, 2, 1, 2, 2
    return ns


def main() -> None:
    ns = _parse()
    if ns.worker == "forward":
        print(json.dumps(forward_worker(ns.reps)))
        return
    if ns.worker == "interleaved":
        print(json.dumps(interleaved_worker(ns.warmup, ns.steps)))
        return
    if ns.worker:
        print(json.dumps(train_worker(ns.worker.removesuffix("-train"), ns.warmup, ns.steps)))
        return
    result = run(ns)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
