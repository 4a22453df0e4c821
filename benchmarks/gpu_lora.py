"""Benchmark (issue 9): slimtune's fast LoRA / DoRA paths against PEFT and full fine-tuning on one GPU.

TinyLlama-1.1B shape (random init), bf16, SDPA attention. Training: batch 8 x 1024, AdamW, median step time of
8 steps after 3 warm-ups, peak torch.cuda.max_memory_allocated; every configuration in a fresh subprocess.
Inference: batch 16 x 512 forward, base / merged / unmerged / mixed batches of 2 and 8 adapters. Correctness in
the same run: slimtune's fast path against its plain-torch path (bf16) and a float32 reference, on random
inputs. Prints one table with ratios and writes JSON.

    PYTHONPATH=src python benchmarks/gpu_lora.py --out $OUT/gpu_lora.json      # on the GPU
    PYTHONPATH=src python benchmarks/gpu_lora.py --tiny                        # CPU smoke run, tiny model
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results" / "gpu_lora.json"
R, ALPHA, LR = 16, 32, 1e-4
QV = ("q_proj", "v_proj")
# name: (library, method, targets, gradient checkpointing, extra environment)
TRAIN: dict[str, tuple[str, str, str, bool, dict[str, str]]] = {
    "st_lora": ("slimtune", "lora", "all", False, {}),
    "peft_lora": ("peft", "lora", "all", False, {}),
    "st_lora_gc": ("slimtune", "lora", "all", True, {}),
    "peft_lora_gc": ("peft", "lora", "all", True, {}),
    "st_dora": ("slimtune", "dora", "all", False, {}),
    "peft_dora": ("peft", "dora", "all", False, {}),
    "st_lora_qv": ("slimtune", "lora", "qv", False, {}),
    "peft_lora_qv": ("peft", "lora", "qv", False, {}),
    "full": ("hf", "full", "all", False, {}),
    "full_gc": ("hf", "full", "all", True, {}),
    "st_dora_recompute": ("slimtune", "dora", "all", False, {"SLIMTUNE_DORA_RECOMPUTE": "1"}),
    "st_lora_reference": ("slimtune", "lora", "all", False, {"SLIMTUNE_KERNELS": "reference"}),
    "st_lora_fused": ("slimtune", "lora", "all", False, {"BENCH_FUSE": "1"}),
    "st_lora_gc_fused": ("slimtune", "lora", "all", True, {"BENCH_FUSE": "1"}),
    "st_dora_fused": ("slimtune", "dora", "all", False, {"BENCH_FUSE": "1"}),
    "st_lora_compiled": ("slimtune", "lora", "all", False, {"BENCH_COMPILE": "1"}),
    "st_lora_gc_compiled": ("slimtune", "lora", "all", True, {"BENCH_COMPILE": "1"}),
    "st_dora_compiled": ("slimtune", "dora", "all", False, {"BENCH_COMPILE": "1"}),
}
ORDER = ["check", "st_lora_compiled", "peft_lora", "st_lora_gc_compiled", "peft_lora_gc", "st_dora_compiled",
         "peft_dora", "infer_st", "infer_peft", "full", "full_gc", "st_lora_qv", "peft_lora_qv", "st_lora",
         "st_lora_gc", "st_dora", "trainer_bf16", "trainer_fp32", "st_lora_reference", "st_dora_recompute",
         "profile:st_lora_compiled", "st_lora_fused", "st_lora_gc_fused", "st_dora_fused"]


# ----- model and timing ---------------------------------------------------------------------------------------
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(tiny: bool, layers: int | None = None, dtype: torch.dtype = torch.bfloat16,
                on: torch.device | None = None) -> nn.Module:
    """The TinyLlama-1.1B shape (or a tiny one), random init from seed 0 (so each rank of a distributed run
    builds the same weights), in ``dtype`` on ``on`` (default: the GPU if there is one)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        shape = {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 512}
    else:  # TinyLlama-1.1B
        shape = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
                 "num_key_value_heads": 4, "vocab_size": 32000}
    if layers is not None:
        shape["num_hidden_layers"] = layers
    cfg = LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=False, use_cache=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(on or device()):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(before)
    return model.to(dtype)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], Any], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def randomize(model: nn.Module, seed: int = 1, std: float = 0.02) -> None:
    """Non-zero adapter weights (B starts at zero) so adapters change the output and A gets gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ----- training -------------------------------------------------------------------------------------------------
def adapt(model: nn.Module, library: str, method: str, targets: str, gc: bool) -> tuple[nn.Module, Callable]:
    """The model to train and its loss function ids -> loss, for one library."""
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if library == "hf":
        return model, lambda ids: model(input_ids=ids, labels=ids, use_cache=False).loss
    names: Any = QV if targets == "qv" else "all-linear"
    if library == "peft":
        import peft

        cfg = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(names) if targets == "qv"
                              else names, use_dora=method == "dora", task_type="CAUSAL_LM")
        wrapped = peft.get_peft_model(model, cfg)
        return wrapped, lambda ids: wrapped(input_ids=ids, labels=ids, use_cache=False).loss
    import slimtune as st
    from slimtune import kernels

    adapted = st.adapt(model, st.LoraConfig(r=R, alpha=ALPHA, targets=names, use_dora=method == "dora"))
    if os.environ.get("BENCH_FUSE") == "1":
        kernels.fuse_model(adapted)
    if os.environ.get("BENCH_COMPILE") == "1":
        kernels.compile_blocks(adapted)
    return adapted, lambda ids: kernels.causal_lm_loss(adapted, ids, ids)


def train_worker(name: str, args: argparse.Namespace) -> dict[str, Any]:
    library, method, targets, gc, _ = TRAIN[name]
    batch, seq = (2, 64) if args.tiny else (8, 1024)
    model = build_model(args.tiny)
    if library == "hf":
        model.requires_grad_(True)
    model, loss_fn = adapt(model, library, method, targets, gc)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device(),
                        generator=torch.Generator(device=device()).manual_seed(0))
    losses: list[float] = []

    def step() -> None:
        loss = loss_fn(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    reset_peak()
    ms = median_ms(step, args.warmup, args.steps)
    return {"name": name, "library": library, "method": method, "targets": targets, "gradient_checkpointing": gc,
            "step_ms": ms, "tokens_per_s": batch * seq / ms * 1e3, "peak_gib": peak_gib(),
            "trainable": sum(p.numel() for p in params), "first_loss": losses[0], "last_loss": losses[-1]}


def trainer_worker(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """slimtune's Trainer itself (TrainConfig defaults: compile auto, the target-row loss, bf16 autocast) on
    the same model and batch shape: ``trainer_bf16`` on bf16 weights, ``trainer_fp32`` on float32 weights
    (the recipe default) under bf16 autocast."""
    import slimtune as st
    from slimtune.train import TrainConfig, Trainer, TrainerState
    from slimtune.train.callbacks import Callback

    batch, seq = (2, 64) if args.tiny else (8, 1024)
    steps = args.warmup + args.steps
    model = build_model(args.tiny, dtype=torch.float32 if name == "trainer_fp32" else torch.bfloat16)
    adapted = st.adapt(model, st.LoraConfig(r=R, alpha=ALPHA, targets="all-linear"))
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, model.config.vocab_size, (batch * steps, seq),
                                                                       generator=g)]
    stamps: list[float] = []

    class Clock(Callback):
        def on_step_end(self, state: TrainerState, metrics: dict[str, Any]) -> None:
            sync()
            stamps.append(time.perf_counter())

    cfg = TrainConfig(steps=steps, batch_size=batch, lr=LR, schedule="constant", log_every=1000)
    collate = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    reset_peak()
    trainer = Trainer(adapted, cfg, data, collate, callbacks=[Clock()], checkpoints=False)
    result = trainer.fit()
    times = [(b - a) * 1e3 for a, b in zip(stamps[args.warmup:], stamps[args.warmup + 1:], strict=False)]
    ms = statistics.median(times)
    return {"name": name, "library": "slimtune", "method": "lora", "targets": "all", "step_ms": ms,
            "tokens_per_s": batch * seq / ms * 1e3, "peak_gib": peak_gib(), "compiled_blocks": trainer.compiled_blocks,
            "precision": str(trainer.precision.dtype), "first_loss": result.losses[0], "last_loss": result.losses[-1]}


# ----- inference ------------------------------------------------------------------------------------------------
def infer_worker(library: str, args: argparse.Namespace) -> dict[str, Any]:
    batch, seq = (4, 32) if args.tiny else (16, 512)
    n_adapters = 8
    model = build_model(args.tiny).eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device(),
                        generator=torch.Generator(device=device()).manual_seed(0))
    names = ["default"] + [f"a{i}" for i in range(1, n_adapters)]
    rows2 = [names[i % 2] for i in range(batch)]  # alternating rows: every adapter's rows scattered
    rows8 = [names[i % n_adapters] for i in range(batch)]
    rows2g = sorted(rows2, key=names.index)  # the same rows grouped by adapter (a server that sorts requests)
    rows8g = sorted(rows8, key=names.index)
    out: dict[str, Any] = {"name": f"infer_{library}", "batch": batch, "seq": seq}
    timed = lambda fn: median_ms(fn, args.infer_warmup, args.infer_steps)  # noqa: E731
    with torch.inference_mode():
        out["base_ms"] = timed(lambda: model(input_ids=ids))
    if library == "peft":
        import peft

        cfg = peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")
        pm = peft.get_peft_model(model, cfg)
        for n in names[1:]:
            pm.add_adapter(n, cfg)
        randomize(pm)
        pm.set_adapter("default")
        pm.eval()
        with torch.inference_mode():
            out["unmerged_ms"] = timed(lambda: pm(input_ids=ids))
            out["mixed2_ms"] = timed(lambda: pm(input_ids=ids, adapter_names=rows2))
            out["mixed8_ms"] = timed(lambda: pm(input_ids=ids, adapter_names=rows8))
            out["mixed2_grouped_ms"] = timed(lambda: pm(input_ids=ids, adapter_names=rows2g))
            out["mixed8_grouped_ms"] = timed(lambda: pm(input_ids=ids, adapter_names=rows8g))
            pm.merge_adapter(["default"])
            out["merged_ms"] = timed(lambda: pm(input_ids=ids))
    else:
        import slimtune as st
        from slimtune import kernels

        am = st.adapt(model, st.LoraConfig(r=R, alpha=ALPHA, targets="all-linear"))
        for n in names[1:]:
            am.add_adapter(n, st.LoraConfig(r=R, alpha=ALPHA, targets="all-linear"))
        randomize(am)
        am.eval()
        with torch.inference_mode():
            out["unmerged_ms"] = timed(lambda: am(input_ids=ids))
            out["mixed2_ms"] = timed(lambda: am(input_ids=ids, adapter_names=rows2))
            out["mixed8_ms"] = timed(lambda: am(input_ids=ids, adapter_names=rows8))
            out["mixed2_grouped_ms"] = timed(lambda: am(input_ids=ids, adapter_names=rows2g))
            out["mixed8_grouped_ms"] = timed(lambda: am(input_ids=ids, adapter_names=rows8g))
            with kernels.fast_paths(False):
                out["unmerged_reference_ms"] = timed(lambda: am(input_ids=ids))
                out["mixed2_reference_ms"] = timed(lambda: am(input_ids=ids, adapter_names=rows2))
                out["mixed8_reference_ms"] = timed(lambda: am(input_ids=ids, adapter_names=rows8))
            am.merge(["default"])
            out["merged_ms"] = timed(lambda: am(input_ids=ids))
            am.unmerge()
            if not args.tiny or torch.cuda.is_available():
                kernels.compile_blocks(am)
                with am.disabled():
                    out["base_compiled_ms"] = timed(lambda: am(input_ids=ids))
                out["unmerged_compiled_ms"] = timed(lambda: am(input_ids=ids))
                out["mixed2_compiled_ms"] = timed(lambda: am(input_ids=ids, adapter_names=rows2))
                out["mixed8_compiled_ms"] = timed(lambda: am(input_ids=ids, adapter_names=rows8))
                for key in ("unmerged", "mixed2", "mixed8"):
                    out[f"{key}_compiled_x_base"] = out[f"{key}_compiled_ms"] / out["base_ms"]
                    out[f"{key}_compiled_x_base_compiled"] = out[f"{key}_compiled_ms"] / out["base_compiled_ms"]
    for key in ("merged", "unmerged", "mixed2", "mixed8", "mixed2_grouped", "mixed8_grouped"):
        out[f"{key}_x_base"] = out[f"{key}_ms"] / out["base_ms"]
    return out


# ----- correctness ----------------------------------------------------------------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


@contextlib.contextmanager
def _mode(flag: bool) -> Iterator[None]:
    from slimtune import kernels

    with kernels.fast_paths(flag):
        yield


def _loss_grads(model: Any, ids: torch.Tensor, fast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    from slimtune import kernels

    with _mode(fast):
        model.zero_grad(set_to_none=True)
        loss = kernels.causal_lm_loss(model, ids, ids, fast=fast)
        loss.backward()
    return loss.detach().float(), [p.grad.detach().float().clone() for p in model.trainable_parameters()]


def _compare(bf16: Any, fp32: Any, ids: torch.Tensor, fuse: bool | str) -> dict[str, Any]:
    """Errors of the bf16 fast (with fused blocks if ``fuse``, compiled blocks if ``fuse == "compile"``) and
    bf16 reference paths against the float32 reference path."""
    from slimtune import kernels

    ref32 = _loss_grads(fp32, ids, fast=False)
    ref = _loss_grads(bf16, ids, fast=False)
    if fuse == "compile":
        kernels.compile_blocks(bf16)
    elif fuse:
        kernels.fuse_model(bf16)
    fast = _loss_grads(bf16, ids, fast=True)
    kernels.unfuse_model(bf16)
    grad_err = lambda got: max(_rel(g, w) for g, w in zip(got[1], ref32[1], strict=True))  # noqa: E731
    res = {"loss_fp32": ref32[0].item(), "loss_fast": fast[0].item(), "loss_reference": ref[0].item(),
           "loss_rel_err_fast": abs(fast[0].item() - ref32[0].item()) / abs(ref32[0].item()),
           "loss_rel_err_reference": abs(ref[0].item() - ref32[0].item()) / abs(ref32[0].item()),
           "grad_max_rel_err_fast": grad_err(fast), "grad_max_rel_err_reference": grad_err(ref),
           "grad_max_rel_fast_vs_reference": max(_rel(g, w) for g, w in zip(fast[1], ref[1], strict=True)),
           "n_grads": len(fast[1])}
    res["ok"] = (res["grad_max_rel_err_fast"] <= max(2 * res["grad_max_rel_err_reference"], 1e-2)
                 and res["loss_rel_err_fast"] <= max(2 * res["loss_rel_err_reference"], 1e-3))
    return res


def check_worker(args: argparse.Namespace) -> dict[str, Any]:
    import slimtune as st
    from slimtune import kernels

    batch, seq = (2, 32) if args.tiny else (2, 512)
    out: dict[str, Any] = {"name": "check", "layers": 2, "batch": batch, "seq": seq}
    ids = torch.randint(0, 512 if args.tiny else 32000, (batch, seq), device=device(),
                        generator=torch.Generator(device=device()).manual_seed(3))
    cases: tuple[tuple[str, bool, bool | str], ...] = (
        ("lora", False, False), ("dora", True, False), ("lora_fused", False, True), ("dora_fused", True, True),
        ("lora_compiled", False, "compile"), ("dora_compiled", True, "compile"))
    for case, dora, fuse in cases:
        base = build_model(args.tiny, layers=2, dtype=torch.float32)
        fp32 = st.adapt(base, st.LoraConfig(r=R, alpha=ALPHA, use_dora=dora))
        randomize(fp32, seed=5)
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        out[case] = _compare(bf16.train(), fp32.train(), ids, fuse)
    # mixed-adapter inference
    base = build_model(args.tiny, layers=2, dtype=torch.float32)
    am = st.adapt(base, st.LoraConfig(r=R, alpha=ALPHA))
    am.add_adapter("b", st.LoraConfig(r=8, alpha=ALPHA))
    am.add_adapter("c", st.LoraConfig(r=32, alpha=ALPHA))
    randomize(am, seed=7, std=0.05)
    am.eval()
    rows = (["b", None, "default", "c"] * batch)[:batch * 2]
    ids2 = torch.cat([ids, ids.flip(1)])
    low = copy.deepcopy(am).to(torch.bfloat16)
    with torch.inference_mode():
        with _mode(False):
            ref32 = am(input_ids=ids2, adapter_names=rows).logits.float()
        with _mode(False):
            ref = low(input_ids=ids2, adapter_names=rows).logits
        with _mode(True):
            fast = low(input_ids=ids2, adapter_names=rows).logits
    out["mixed"] = {"rel_err_fast": _rel(fast, ref32), "rel_err_reference": _rel(ref, ref32)}
    out["mixed"]["ok"] = out["mixed"]["rel_err_fast"] <= max(2 * out["mixed"]["rel_err_reference"], 1e-2)
    # fused cross-entropy at the real head size
    h = torch.randn(4096, 2048 if not args.tiny else 64, device=device(), dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(32000 if not args.tiny else 512, h.shape[1], device=device(), dtype=torch.bfloat16) * 0.02
    labels = torch.randint(0, w.shape[0], (h.shape[0],), device=device())
    labels[::7] = -100
    loss = kernels.linear_cross_entropy(h, w, labels)
    (gh,) = torch.autograd.grad(loss, [h])
    h32 = h.detach().float().requires_grad_(True)
    ref_loss = kernels.linear_cross_entropy_reference(h32, w.float(), labels)
    (rgh,) = torch.autograd.grad(ref_loss, [h32])
    out["cross_entropy"] = {"loss_rel_err": abs(loss.item() - ref_loss.item()) / ref_loss.item(),
                            "grad_rel_err": _rel(gh, rgh)}
    ce = out["cross_entropy"]
    ce["ok"] = ce["loss_rel_err"] < 1e-3 and ce["grad_rel_err"] < 1e-2
    out["ok"] = all(out[k]["ok"] for k in CHECKS)
    return out


def profile_worker(config: str, args: argparse.Namespace) -> dict[str, Any]:
    """Where one training configuration spends GPU time: the top ops and kernels of two profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    library, method, targets, gc, _ = TRAIN[config]
    batch, seq = (2, 64) if args.tiny else (8, 1024)
    model, loss_fn = adapt(build_model(args.tiny), library, method, targets, gc)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device())

    def step() -> None:
        loss_fn(ids).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts, record_shapes=True) as prof:
        for _ in range(2):
            step()
        sync()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=45, max_name_column_width=90)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=40, max_name_column_width=40,
                                                                  max_shapes_column_width=110)
    if args.out:
        Path(args.out).with_name(f"profile_{config}.txt").write_text(table + "\n\n" + by_shape)
    step_ms = median_ms(step, 1, 4)
    return {"name": f"profile:{config}", "step_ms": step_ms, "gpu_ms_per_step": kernel_time(prof, 2),
            "top": table.splitlines()[:40]}


KERNEL_KINDS = (("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk", "sm90")),
                ("attention", ("flash", "fmha", "attention", "cudnn")), ("triton", ("triton",)),
                ("copy", ("memcpy", "memset", "copy")), ("reduce", ("reduce",)),
                ("elementwise", ("elementwise", "vectorized", "unrolled")))


def kernel_time(prof: Any, steps: int) -> dict[str, float]:
    """GPU kernel time per step (ms) by kind of kernel, from a profile of ``steps`` steps. Spans that annotate
    the GPU timeline (``## Call CompiledFxGraph ...``, ``Optimizer.step#...``) cover kernels counted on their
    own and are left out (the fourth session's committed JSON still counted them, under "other")."""
    totals: dict[str, float] = {}
    for event in prof.events():
        if str(getattr(event, "device_type", "")).split(".")[-1] != "CUDA":
            continue
        if getattr(event, "is_user_annotation", False) or event.name.startswith("## ") or "#" in event.name:
            continue
        name = event.name.lower()
        kind = next((k for k, words in KERNEL_KINDS if any(w in name for w in words)), "other")
        totals[kind] = totals.get(kind, 0.0) + getattr(event, "device_time", event.cuda_time) / 1e3 / steps
    totals["total"] = sum(totals.values())
    return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


# ----- driver ---------------------------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker == "check":
        return check_worker(args)
    if args.worker.startswith("profile:"):
        return profile_worker(args.worker.removeprefix("profile:"), args)
    if args.worker.startswith("trainer_"):
        return trainer_worker(args.worker, args)
    if args.worker.startswith("infer_"):
        return infer_worker(args.worker.removeprefix("infer_"), args)
    return train_worker(args.worker, args)


def spawn(name: str, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    config = name.removeprefix("profile:")
    env = {**os.environ, **(TRAIN[config][4] if config in TRAIN else {})}
    cmd = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--out", args.out] if args.out else []
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"name": name, "error": (proc.stderr or proc.stdout)[-2000:]}
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["wall_s"] = time.perf_counter() - start
    return result


PAIRS = [("LoRA r=16 all linear, compile_blocks", "st_lora_compiled", "peft_lora"),
         ("LoRA all linear, grad ckpt, compile_blocks", "st_lora_gc_compiled", "peft_lora_gc"),
         ("DoRA r=16 all linear, compile_blocks", "st_dora_compiled", "peft_dora"),
         ("LoRA r=16 all linear", "st_lora", "peft_lora"),
         ("LoRA + fused norm/SwiGLU", "st_lora_fused", "peft_lora"),
         ("LoRA all linear, grad ckpt", "st_lora_gc", "peft_lora_gc"),
         ("LoRA grad ckpt + fused norm/SwiGLU", "st_lora_gc_fused", "peft_lora_gc"),
         ("LoRA q/v only", "st_lora_qv", "peft_lora_qv"),
         ("DoRA r=16 all linear", "st_dora", "peft_dora"),
         ("DoRA + fused norm/SwiGLU", "st_dora_fused", "peft_dora"),
         ("DoRA, recompute", "st_dora_recompute", "peft_dora"),
         ("LoRA, slimtune reference path", "st_lora_reference", "peft_lora"),
         ("LoRA, slimtune Trainer (bf16 weights)", "trainer_bf16", "peft_lora"),
         ("LoRA, slimtune Trainer (fp32 weights, bf16 autocast)", "trainer_fp32", "peft_lora"),
         ("full fine-tuning (HF) vs PEFT LoRA", "full", "peft_lora"),
         ("full FT grad ckpt vs PEFT LoRA gc", "full_gc", "peft_lora_gc")]
CHECKS = ("lora", "dora", "lora_fused", "dora_fused", "lora_compiled", "dora_compiled", "mixed", "cross_entropy")


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _infer_cell(res: dict[str, Any], key: str) -> str:
    if f"{key}_ms" not in res:
        return "-"
    times = f"{res[key + '_ms']:.1f}"
    if key.endswith("_compiled") and key != "base_compiled":
        plain = key.removesuffix("_compiled")
        x_base, x_compiled = res[plain + "_compiled_x_base"], res[plain + "_compiled_x_base_compiled"]
        return f"{times} ({x_base:.2f}x base, {x_compiled:.2f}x compiled base)"
    return times if key.startswith("base") else f"{times} ({res[key + '_x_base']:.2f}x)"


def _check_line(check: dict[str, Any]) -> str:
    parts = []
    for key in CHECKS:
        c = check.get(key, {})
        fast = c.get("grad_max_rel_err_fast", c.get("rel_err_fast", c.get("grad_rel_err")))
        ref = c.get("grad_max_rel_err_reference", c.get("rel_err_reference"))
        parts.append(f"{key}: {_num(fast, '.2e')} / {_num(ref, '.2e')}")
    return "correctness (max rel. error vs float32, fast / reference): " + ", ".join(parts) + f"; ok={check.get('ok')}"


def report(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| run | slimtune tok/s | GiB | PEFT/HF tok/s | GiB | speed ratio | memory ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, ours, theirs in PAIRS:
        a, b = results.get(ours, {}), results.get(theirs, {})
        lines.append(f"| {label} | {_num(a.get('tokens_per_s'), ',.0f')} | {_num(a.get('peak_gib'), '.1f')} | "
                     f"{_num(b.get('tokens_per_s'), ',.0f')} | {_num(b.get('peak_gib'), '.1f')} | "
                     f"{_ratio(a.get('tokens_per_s'), b.get('tokens_per_s'))} | "
                     f"{_ratio(a.get('peak_gib'), b.get('peak_gib'))} |")
    lines += ["", "| inference (ms, x own base) | slimtune | PEFT |", "| --- | --- | --- |"]
    for key in ("base", "merged", "unmerged", "mixed2", "mixed8", "mixed2_grouped", "mixed8_grouped", "base_compiled",
                "unmerged_compiled", "mixed2_compiled", "mixed8_compiled"):
        lines.append(f"| {key} | {_infer_cell(results.get('infer_st', {}), key)} | "
                     f"{_infer_cell(results.get('infer_peft', {}), key)} |")
    if results.get("check"):
        lines += ["", _check_line(results["check"])]
    for name, res in results.items():
        if "error" in res:
            lines.append(f"{name}: ERROR {res['error'].splitlines()[-1] if res['error'] else ''}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and batch (CPU smoke run)")
    parser.add_argument("--out", default=None, help=f"JSON path (default {RESULTS}, or none with --tiny)")
    parser.add_argument("--only", default=None, help="comma-separated subset of: " + ",".join(ORDER))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=520.0, help="skip what would start after this")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.infer_warmup, args.infer_steps = (1, 2) if args.tiny else (3, 10)
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args)), flush=True)
        return
    out = Path(args.out) if args.out else (None if args.tiny else RESULTS)
    names = args.only.split(",") if args.only else ORDER
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    meta = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "tiny": args.tiny, "steps": args.steps, "warmup": args.warmup}
    for name in names:
        left = args.budget_s - (time.perf_counter() - start)
        if left < 20:
            results[name] = {"name": name, "error": "skipped: out of time budget"}
            continue
        results[name] = spawn(name, args, timeout=left)
        res = results[name]
        print(f"[{time.perf_counter() - start:6.1f}s] {name}: " + (res["error"].splitlines()[-1] if "error" in res
              else json.dumps({k: v for k, v in res.items() if k != "top"})[:300]), flush=True)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    try:
        import peft
        import transformers

        meta.update(transformers=transformers.__version__, peft=peft.__version__)
    except ImportError:
        pass
    table = report(results)
    if out is not None:
        out.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=1))
    print("\n".join(table))


if __name__ == "__main__":
    main()
