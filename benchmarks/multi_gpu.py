"""Benchmark (issue 10): slimtune's Trainer on 2 GPUs under torchrun (DDP and FSDP2) against the same recipe on
one GPU in the same session, plus loss equivalence and checkpoint resume across world sizes.

Recipe (gpu_lora.py's): TinyLlama-1.1B shape (random init, seed 0), bf16 weights, SDPA attention, LoRA r=16
alpha=32 on all linear layers, AdamW, global batch 8 x 1024 (one GPU: 8 per step; two GPUs: 4 each, the two
halves of the same global batch, as the Trainer splits it). Unlike gpu_lora.py the loss is the model's own
(``model(**batch).loss``, what the Trainer calls by default), because ``kernels.causal_lm_loss`` does not go
through the DDP / FSDP2 wrapper's forward. The data are a fixed seeded stream of Zipf-distributed tokens from a
2,048-token sub-vocabulary, so that the loss falls visibly within 20 steps and the curves can be compared.

Every run is a fresh subprocess that drives the real ``slimtune.train.Trainer`` (``strategy=`` "ddp" or
"fsdp2"); NCCL_NVLS_ENABLE=0 is set for all of them:

    single           one process, one GPU, batch 8                     (the baseline)
    ddp              torchrun --standalone --nproc_per_node 2, DDP,   batch 4 per GPU
    fsdp2            the same with FSDP2 (every decoder block and the root sharded)
    fsdp2_to_single  fsdp2's step-10 checkpoint resumed in one process, trained on to step 20
    single_to_fsdp2  single's step-10 checkpoint resumed under FSDP2 on 2 GPUs, trained on to step 20

Measured: per-step wall time on rank 0 (CUDA-synchronised at each step's end; checkpoint writes excluded),
median of the steps after the warm-up; tokens/s in all and per GPU; peak torch.cuda.max_memory_allocated of
each rank over the fit (the Trainer's TrainResult.peak_memory); the memory held after set-up (model, adapter,
sharding). Checked: DDP scaling efficiency tokens/s(2 GPUs) / (2 x tokens/s(1 GPU)) >= 0.9; FSDP2 peak per
GPU below the single-GPU run's; per-step losses of ddp and fsdp2 against single, and of the resumed runs
against the uninterrupted ones, within a relative tolerance of 2e-2 (bf16; 1e-4 in float32 with --tiny).

    PYTHONPATH=src python benchmarks/multi_gpu.py --out $OUT/multi_gpu.json   # needs 2 GPUs (nvidia-h200-x2)
    PYTHONPATH=src python benchmarks/multi_gpu.py --tiny                      # CPU smoke run: gloo, tiny Llama
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results" / "multi_gpu.json"
R, ALPHA, LR, WARMUP_LR_STEPS = 16, 32, 5e-4, 2
GLOBAL_BATCH, SEQ = 8, 1024
TINY_GLOBAL_BATCH, TINY_SEQ = 2, 32
#: relative tolerance on per-step losses between world sizes. bf16 keeps 8 significant bits (unit roundoff
#: 2**-8 = 3.9e-3): the runs differ in GEMM shapes (batch 8 vs 4 per GPU) and in the bf16 gradient all-reduce /
#: reduce-scatter, i.e. by about an ulp in every gradient element, and these differences compound over 20
#: AdamW steps on bf16 weights. 2e-2 is about 5 bf16 ulps of the loss: far above that noise, far below what a
#: wrong data split, gradient scaling or a missed synchronisation does to the curve. float32 (--tiny) only
#: reorders sums: 1e-4.
TOL_BF16, TOL_FP32 = 2e-2, 1e-4
SCALING_TARGET = 0.9
# name: (processes, strategy, checkpoint source run or None)
RUNS: dict[str, tuple[int, str, str | None]] = {
    "single": (1, "ddp", None),
    "ddp": (2, "ddp", None),
    "fsdp2": (2, "fsdp2", None),
    "fsdp2_to_single": (1, "ddp", "fsdp2"),
    "single_to_fsdp2": (2, "fsdp2", "single"),
}


# ----- model and data -------------------------------------------------------------------------------------------
def build_model(tiny: bool, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """gpu_lora.py's model: the TinyLlama-1.1B shape (or its tiny shape), random init from seed 0, on ``device``."""
    from gpu_lora import build_model as gpu_lora_model  # benchmarks/ helpers (this script's folder is on sys.path)

    return gpu_lora_model(tiny, dtype=dtype, on=device)


def make_data(n: int, seq: int, vocab: int, seed: int = 1234) -> list[dict[str, torch.Tensor]]:
    """``n`` fixed-length sequences of Zipf(1.1) tokens over a random sub-vocabulary (labels = input_ids)."""
    g = torch.Generator().manual_seed(seed)
    k = min(2048, vocab // 4)
    support = torch.randperm(vocab, generator=g)[:k]
    probs = 1.0 / torch.arange(1, k + 1, dtype=torch.float64) ** 1.1
    ids = support[torch.multinomial(probs / probs.sum(), n * seq, replacement=True, generator=g)].view(n, seq)
    return [{"input_ids": row, "labels": row} for row in ids]


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([r[key] for r in rows]) for key in ("input_ids", "labels")}


def fingerprint(model: nn.Module) -> list[float]:
    """Sum and absolute sum of every parameter (float64): equal on all ranks when they built the same model."""
    total = torch.zeros(2, dtype=torch.float64, device=next(model.parameters()).device)
    with torch.no_grad():
        for p in model.parameters():
            total[0] += p.sum(dtype=torch.float64)
            total[1] += p.abs().sum(dtype=torch.float64)
    return [float(x) for x in total.cpu()]


# ----- the worker (one rank) ------------------------------------------------------------------------------------
def _step_timer(device: torch.device) -> Any:
    from slimtune.train import Callback

    class StepTimer(Callback):
        """Rank 0's wall time per step (synchronised), leaving out checkpoint writes; grad norms and lrs."""

        def __init__(self) -> None:
            self.step_s: list[float] = []
            self.grad_norms: list[float | None] = []
            self.lrs: list[float] = []
            self._t = 0.0

        def _now(self) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter()

        def on_train_begin(self, state: Any) -> None:
            self._t = self._now()

        def on_step_end(self, state: Any, metrics: dict[str, Any]) -> None:
            now = self._now()
            self.step_s.append(now - self._t)
            self._t = now
            self.grad_norms.append(metrics.get("grad_norm"))
            self.lrs.append(float(metrics.get("lr") or 0.0))

        def on_save(self, state: Any, path: Path) -> None:
            self._t = self._now()

    return StepTimer()


def _rank_info(env: Any, resident: int | None, result: Any, model: nn.Module, prints: list[float]) -> dict[str, Any]:
    cuda = env.device.type == "cuda"
    return {"rank": env.rank, "device": torch.cuda.get_device_name(env.device) if cuda else "cpu",
            "peak_bytes": int(result.peak_memory),
            "peak_kind": "cuda_max_allocated" if cuda else "rss_peak",
            "reserved_peak_bytes": int(torch.cuda.max_memory_reserved(env.device)) if cuda else None,
            "resident_bytes": resident, "fingerprint": prints,
            "sharded": any(hasattr(p, "device_mesh") for p in model.parameters())}


def worker(args: argparse.Namespace) -> None:
    import slimtune as st
    from slimtune.train import TrainConfig, Trainer
    from slimtune.train.distributed import all_gather_objects, destroy, init_distributed

    if args.tiny:
        torch.set_num_threads(1)
    env = init_distributed("cpu" if args.tiny else None)
    if not args.tiny and env.device.type != "cuda":
        raise SystemExit("this worker needs a CUDA device (or --tiny)")
    global_batch, seq = (TINY_GLOBAL_BATCH, TINY_SEQ) if args.tiny else (GLOBAL_BATCH, SEQ)
    if global_batch % env.world_size:
        raise SystemExit(f"global batch {global_batch} does not split over {env.world_size} processes")
    model: Any = build_model(args.tiny, env.device, torch.float32 if args.tiny else torch.bfloat16)
    adapted = st.adapt(model, st.LoraConfig(r=R, alpha=ALPHA, targets="all-linear"))
    if args.compile:
        from slimtune import kernels

        kernels.compile_blocks(adapted)
    prints = fingerprint(adapted)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    config = TrainConfig(steps=args.steps, batch_size=global_batch // env.world_size, lr=LR, schedule="linear",
                         warmup_steps=WARMUP_LR_STEPS, max_grad_norm=1.0, precision="fp32" if args.tiny else "bf16",
                         seed=0, checkpoint_every=args.resume_at, keep_last=2, log_every=5)
    data = make_data(global_batch * args.steps, seq, model.config.vocab_size)
    timer = _step_timer(env.device)
    trainer = Trainer(adapted, config, data, collate, run_dir=args.run_dir, callbacks=[timer],
                      strategy=args.strategy, device=env.device)
    resident = int(torch.cuda.memory_allocated(env.device)) if env.device.type == "cuda" else None
    result = trainer.fit()
    ranks = all_gather_objects(_rank_info(env, resident, result, adapted, prints), env)
    if env.is_main:
        nccl = _nccl_version() if env.device.type == "cuda" else None
        record = {"world_size": env.world_size, "strategy": args.strategy if env.distributed else "none",
                  "batch_per_gpu": config.batch_size, "global_batch": global_batch, "seq": seq,
                  "tokens_per_step": global_batch * seq, "trainable_params": trainable, "losses": result.losses,
                  "grad_norms": timer.grad_norms, "lrs": timer.lrs, "step_s": timer.step_s,
                  "resumed_from": result.resumed_from, "steps": result.steps,
                  "tokens_trained": result.tokens_trained, "trainer_tokens_per_s": result.tokens_per_s,
                  "loop_seconds": result.loop_seconds, "adapter_dir": str(result.adapter_dir), "ranks": ranks,
                  "nccl": nccl, "cuda": torch.version.cuda, "compiled": bool(args.compile)}
        Path(args.result).write_text(json.dumps(record, indent=1))
    destroy()


def _nccl_version() -> str | None:
    try:
        version: Any = torch.cuda.nccl.version()
    except Exception:  # a build without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


# ----- the driver -----------------------------------------------------------------------------------------------
def command(name: str, args: argparse.Namespace, run_dir: Path, result: Path) -> list[str]:
    procs, strategy, _ = RUNS[name]
    script = [str(Path(__file__).resolve()), "--worker", "--strategy", strategy, "--run-dir", str(run_dir),
              "--result", str(result), "--steps", str(args.steps), "--resume-at", str(args.resume_at)]
    script += ["--tiny"] if args.tiny else []
    script += ["--compile"] if args.compile else []
    if procs == 1:
        return [sys.executable, *script]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *script]


def launch(name: str, args: argparse.Namespace, work: Path, timeout: float) -> dict[str, Any]:
    """Run ``name`` in a fresh process (group); its rank 0's record, or {"error": ...}."""
    run_dir, result, log_path = work / name, work / f"{name}.json", work / f"{name}.log"
    source = RUNS[name][2]
    if source is not None:
        ckpt = work / source / "checkpoints" / f"step-{args.resume_at:06d}"
        if not (ckpt / "COMPLETE").is_file():
            return {"error": f"no complete checkpoint {ckpt.name} from run {source!r} to resume"}
        shutil.copytree(ckpt, run_dir / "checkpoints" / ckpt.name)
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1"}
    if args.tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command(name, args, run_dir, result), env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return {"error": f"timed out after {timeout:.0f} s; log: {_tail(log_path)}"}
    if code != 0 or not result.is_file():
        return {"error": f"exit code {code}; log: {_tail(log_path)}"}
    record: dict[str, Any] = json.loads(result.read_text())
    record["wall_s"] = time.perf_counter() - start
    return record


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """End the process group this script started for one run (torchrun and its ranks)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


# ----- analysis -------------------------------------------------------------------------------------------------
def max_rel_diff(got: list[float | None] | None, ref: list[float | None] | None, start: int = 0) -> float | None:
    """max over steps >= start of |got - ref| / |ref| (inf where one is missing or not finite)."""
    if not got or not ref or len(got) != len(ref) or start >= len(ref):
        return None
    worst = 0.0
    for a, b in zip(got[start:], ref[start:], strict=True):
        if a is None or b is None:
            return float("inf")
        worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    return worst


def speed(rec: dict[str, Any], warmup: int) -> dict[str, float] | None:
    timed = rec.get("step_s", [])[warmup:]
    if not timed:
        return None
    step = statistics.median(timed)
    total = rec["tokens_per_step"] / step
    return {"median_step_s": step, "tokens_per_s_total": total, "tokens_per_s_per_gpu": total / rec["world_size"],
            "timed_steps": len(timed)}


def adapter_diff(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """max over tensors of ||a - b|| / ||b|| between two runs' final adapters."""
    from slimtune.formats.safe import read_tensors

    try:
        ta = read_tensors(Path(a["adapter_dir"]) / "adapter_model.safetensors")
        tb = read_tensors(Path(b["adapter_dir"]) / "adapter_model.safetensors")
    except Exception:  # a missing file is reported as None, not a crash of the report
        return None
    if ta.keys() != tb.keys():
        return float("inf")
    return max(((ta[k].float() - tb[k].float()).norm() / tb[k].float().norm().clamp_min(1e-30)).item() for k in tb)


def _peak(rec: dict[str, Any], key: str = "peak_bytes") -> float | None:
    values = [r[key] for r in rec.get("ranks", []) if r.get(key) is not None]
    return max(values) / 2**30 if values else None


def analyse(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    tol = TOL_FP32 if args.tiny else TOL_BF16
    ok = {k: v for k, v in results.items() if "error" not in v}
    out: dict[str, Any] = {"tolerance": tol, "scaling_target": SCALING_TARGET}
    for rec in ok.values():
        rec["speed"] = speed(rec, args.warmup) if rec.get("resumed_from") is None else None
        rec["peak_gib_max_rank"], rec["resident_gib_max_rank"] = _peak(rec), _peak(rec, "resident_bytes")
        prints = [tuple(r["fingerprint"]) for r in rec.get("ranks", [])]
        rec["same_init_on_all_ranks"] = len(set(prints)) <= 1
    single = ok.get("single")
    if single is not None:
        for name in ("ddp", "fsdp2"):
            if name in ok:
                out[f"{name}_loss_rel_diff"] = max_rel_diff(ok[name]["losses"], single["losses"])
                out[f"{name}_grad_norm_rel_diff"] = max_rel_diff(ok[name]["grad_norms"], single["grad_norms"])
                out[f"{name}_adapter_rel_diff"] = adapter_diff(ok[name], single)
        losses = [x for x in single["losses"] if x is not None]
        out["single_loss_first_last"] = [losses[0], losses[-1]] if losses else None
    for name, ref in (("fsdp2_to_single", "fsdp2"), ("single_to_fsdp2", "single")):
        if name in ok and ref in ok:
            out[f"{name}_resumed_from"] = ok[name]["resumed_from"]
            out[f"{name}_loss_rel_diff"] = max_rel_diff(ok[name]["losses"], ok[ref]["losses"], args.resume_at)
            if single is not None:
                out[f"{name}_vs_single_loss_rel_diff"] = max_rel_diff(ok[name]["losses"], single["losses"],
                                                                      args.resume_at)
    out["checks"] = checks(ok, out, args, tol)
    return out


def _within(value: float | None, tol: float) -> bool | None:
    return None if value is None else value <= tol


def checks(ok: dict[str, dict[str, Any]], out: dict[str, Any], args: argparse.Namespace,
           tol: float) -> dict[str, Any]:
    found: dict[str, Any] = {}
    base = (ok.get("single") or {}).get("speed")
    for name in ("ddp", "fsdp2"):
        sp = (ok.get(name) or {}).get("speed")
        if base and sp:  # tokens/s of N processes / (N x tokens/s of one)
            out[f"{name}_scaling_efficiency"] = sp["tokens_per_s_per_gpu"] / base["tokens_per_s_total"]
    # the speed and memory targets are about CUDA: with --tiny (CPU processes, RSS) they are reported, not judged
    eff = None if args.tiny else out.get("ddp_scaling_efficiency")
    found["ddp_scaling_efficiency_ge_0.9"] = None if eff is None else eff >= SCALING_TARGET
    peak_1 = None if args.tiny else (ok.get("single") or {}).get("peak_gib_max_rank")
    peak_f = (ok.get("fsdp2") or {}).get("peak_gib_max_rank")
    found["fsdp2_peak_below_single"] = None if peak_1 is None or peak_f is None else peak_f < peak_1
    for name in ("ddp", "fsdp2", "fsdp2_to_single", "single_to_fsdp2"):
        found[f"{name}_losses_within_tol"] = _within(out.get(f"{name}_loss_rel_diff"), tol)
    for name in ("fsdp2_to_single", "single_to_fsdp2"):
        if name in ok:
            found[f"{name}_resumed_at_{args.resume_at}"] = out.get(f"{name}_resumed_from") == args.resume_at
    found["same_init_on_all_ranks"] = all(rec.get("same_init_on_all_ranks", True) for rec in ok.values())
    return found


# ----- report ---------------------------------------------------------------------------------------------------
def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _flag(value: bool | None) -> str:
    return "n/a" if value is None else ("PASS" if value else "FAIL")


def report(results: dict[str, dict[str, Any]], summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    unit = "GiB (CUDA max allocated)" if not args.tiny else "GiB (CPU RSS peak, not comparable)"
    lines = [f"| run | procs | batch/proc | median step ms | tok/s in all | tok/s per proc | vs 1 proc | "
             f"peak {unit} per proc | after set-up GiB | max loss rel. diff vs single |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = ((results.get("single") or {}).get("speed") or {}).get("tokens_per_s_total")
    for name in ("single", "ddp", "fsdp2"):
        rec = results.get(name, {})
        sp = rec.get("speed") or {}
        total = sp.get("tokens_per_s_total")
        lines.append(f"| {name} | {rec.get('world_size', '-')} | {rec.get('batch_per_gpu', '-')} | "
                     f"{_num(sp.get('median_step_s') and sp['median_step_s'] * 1e3, '.1f')} | {_num(total, ',.0f')} | "
                     f"{_num(sp.get('tokens_per_s_per_gpu'), ',.0f')} | "
                     f"{f'{total / base:.2f}x' if total and base else '-'} | "
                     f"{_num(rec.get('peak_gib_max_rank'), '.2f')} | {_num(rec.get('resident_gib_max_rank'), '.2f')} | "
                     f"{_num(summary.get(f'{name}_loss_rel_diff') if name != 'single' else None, '.2e')} |")
    lines += ["", f"| resumed run | from step | max loss rel. diff, steps {args.resume_at + 1}-{args.steps}, vs "
                  "uninterrupted | vs single |", "| --- | --- | --- | --- |"]
    for name, ref in (("fsdp2_to_single", "fsdp2"), ("single_to_fsdp2", "single")):
        lines.append(f"| {name} (vs {ref}) | {summary.get(f'{name}_resumed_from', '-')} | "
                     f"{_num(summary.get(f'{name}_loss_rel_diff'), '.2e')} | "
                     f"{_num(summary.get(f'{name}_vs_single_loss_rel_diff'), '.2e')} |")
    lines += ["", f"loss tolerance {summary['tolerance']:g} (relative, per step); single-run loss first/last: "
                  f"{summary.get('single_loss_first_last')}; grad-norm rel. diff ddp/fsdp2 vs single: "
                  f"{_num(summary.get('ddp_grad_norm_rel_diff'), '.2e')} / "
                  f"{_num(summary.get('fsdp2_grad_norm_rel_diff'), '.2e')}; final adapter rel. diff ddp/fsdp2 vs "
                  f"single: {_num(summary.get('ddp_adapter_rel_diff'), '.2e')} / "
                  f"{_num(summary.get('fsdp2_adapter_rel_diff'), '.2e')}",
              f"scaling efficiency ddp / fsdp2: {_num(summary.get('ddp_scaling_efficiency'), '.3f')} / "
              f"{_num(summary.get('fsdp2_scaling_efficiency'), '.3f')} (target for ddp >= {SCALING_TARGET})"]
    lines += [f"- {key}: {_flag(value)}" for key, value in summary["checks"].items()]
    for name, rec in results.items():
        if "error" in rec:
            lines.append(f"{name}: ERROR {rec['error'][-600:]}")
    return lines


def meta(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import transformers

    import slimtune

    info: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                            "slimtune": slimtune.__version__, "tiny": args.tiny, "steps": args.steps,
                            "warmup": args.warmup, "resume_at": args.resume_at, "compile": args.compile,
                            "gpus_visible": 0 if args.tiny else torch.cuda.device_count(), "nproc": 2,
                            "lr": LR, "lora": {"r": R, "alpha": ALPHA, "targets": "all-linear"},
                            "NCCL_NVLS_ENABLE": "0", "backend": "gloo" if args.tiny else "nccl"}
    done = [r for r in results.values() if "error" not in r]
    if done:
        info.update(nccl=done[0].get("nccl"), cuda=done[0].get("cuda"),
                    devices=sorted({d["device"] for r in done for d in r.get("ranks", [])}))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    return info


def drive(args: argparse.Namespace) -> int:
    if not args.tiny and torch.cuda.device_count() < 2:
        print(f"multi_gpu.py needs 2 CUDA GPUs (found {torch.cuda.device_count()}): run it on an 'nvidia-h200-x2' "
              "machine, or use --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (None if args.tiny else RESULTS)
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        print(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="multi_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            left = args.budget_s - (time.perf_counter() - start)
            shutil.rmtree(work / name, ignore_errors=True)
            results[name] = (launch(name, args, work, timeout=left) if left > 20
                             else {"error": "skipped: out of time budget"})
            res = results[name]
            brief = res["error"].splitlines()[0] if "error" in res else (
                f"losses {[round(x, 4) if x is not None else None for x in res['losses']]}")
            print(f"[{time.perf_counter() - start:6.1f}s] {name}: {brief[:400]}", flush=True)
            if out is not None:
                _write(out, {"meta": meta(args, results), "results": results})
        summary = analyse(results, args)
        table = report(results, summary, args)
        if out is not None:
            _write(out, {"meta": meta(args, results), "summary": summary, "results": results, "table": table})
        print("\n".join(table))
        if out is not None:  # the runs' logs (torchrun, NCCL, trainer) next to the JSON
            logs = out.parent / f"{out.stem}_logs"
            logs.mkdir(parents=True, exist_ok=True)
            for path in work.glob("*.log"):
                shutil.copy(path, logs / path.name)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if any("error" in r for r in results.values()) else 0


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny Llama on CPU, gloo, 2 processes (smoke run)")
    parser.add_argument("--out", default=None, help=f"JSON path (default {RESULTS}, or none with --tiny)")
    parser.add_argument("--only", default=None, help="comma-separated subset of: " + ",".join(RUNS))
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 20; 6 with --tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 3; 1 with --tiny)")
    parser.add_argument("--resume-at", type=int, default=None, help="checkpoint step resumed across world sizes "
                        "(default steps // 2)")
    parser.add_argument("--compile", action="store_true", help="kernels.compile_blocks before the Trainer wraps")
    parser.add_argument("--work", default=None, help="keep run folders here (default: a temporary folder)")
    parser.add_argument("--budget-s", type=float, default=560.0, help="skip runs that would start after this")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="ddp", choices=("ddp", "fsdp2"), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (6 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.resume_at = args.resume_at or max(1, args.steps // 2)
    if args.worker:
        worker(args)
        return
    sys.exit(drive(args))


if __name__ == "__main__":
    main()
