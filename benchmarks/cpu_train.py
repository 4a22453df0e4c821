"""Benchmark (issue 4): `slimtune train` against PEFT with the Hugging Face Trainer on CPU, SmolLM2-135M.

Both sides train LoRA r=16, alpha=32 on every linear layer of SmolLM2-135M-Instruct (float32) on the same
rows of the bundled chatterbot Q&A pairs, in the same order, with the same batch, steps, AdamW, learning rate,
schedule, warm-up and gradient clipping, each in its own fresh process (sides alternated ABBA over rounds):

- slimtune: the real CLI, ``python -m slimtune train recipe.yaml``, on a recipe generated into a temp dir;
  its loop times and token counts are read back from the run folder's metrics.jsonl.
- HF: a worker of this script loads the same model (``load_smollm2``), applies ``peft.LoraConfig`` and trains
  with ``transformers.Trainer`` on the rows that slimtune's own data layer builds from the same recipe
  (``slimtune.train.run.build_data``), fed in slimtune's batch order (``BatchOrder``) through a sequential
  sampler and ``DataCollatorForSeq2Seq`` (right padding to the longest in the batch, as slimtune pads). Its
  batches are checked against slimtune's collator (shapes, token counts and a CRC of every batch), and its
  learning rates against slimtune's per step.

Measured per side: the training loop's wall time (first step's start to last step's end, as each side records
it; start-up, model loading, data building and the final save excluded), and the whole process end to end;
non-padding and padded tokens processed and per second; peak RSS of the child (``os.wait4``'s ru_maxrss) and
its RSS just before training began (sampled from /proc by the parent); the losses. Step 1's loss must agree
across the sides (LoRA's B starts at zero, so it is the base model's loss on the same batch). Prints a markdown
table and writes JSON to benchmarks/results/cpu_train.json.

    python benchmarks/cpu_train.py                 # the full run: 30 steps, 1 run per side
    python benchmarks/cpu_train.py --rounds 2      # 2 runs per side, alternated ABBA
    python benchmarks/cpu_train.py --quick         # a smoke run: 3 steps, 1 round
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import yaml

from procmem import machine  # benchmarks/ helpers (this script's folder is on sys.path)

RESULTS = Path(__file__).parent / "results" / "cpu_train.json"
SIDES = ("slimtune", "hf")
LABELS = {"slimtune": "slimtune train", "hf": "PEFT + HF Trainer"}
BATCH, MAX_LENGTH, RANK, ALPHA, LR, WARMUP_RATIO, SEED = 8, 128, 16, 32, 1e-3, 0.1, 0
LOSS_TOL = 1e-4  # step 1 (B = 0 on both sides): the base model's loss on the same batch
POLL_S = 0.05
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def recipe_dict(steps: int, run_dir: Path) -> dict[str, Any]:
    """The recipe both sides train from (the HF worker reads every setting it uses out of this file)."""
    return {
        "model": {"name": "builtin:smollm2", "dtype": "float32"},
        "method": {"type": "lora", "r": RANK, "alpha": ALPHA, "targets": "all-linear"},
        "data": {"train": {"path": "builtin:chatterbot", "split": "train"}, "max_length": MAX_LENGTH},
        "train": {
            "steps": steps,
            "batch_size": BATCH,
            "lr": LR,
            "schedule": "cosine",
            "warmup_steps": int(WARMUP_RATIO * steps),
            "log_every": 1_000_000,
        },
        "output_dir": str(run_dir),
        "seed": SEED,
    }


# ----- what both sides are measured by -----------------------------------------------------------------------
def batch_stats(batch: dict[str, Any]) -> dict[str, Any]:
    """Token counts of one collated batch and a CRC of its tensors (to show two batches are the same)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    crc = 0
    for t in (ids, mask, labels):
        crc = zlib.crc32(t.contiguous().numpy().tobytes(), crc)
    return {
        "shape": list(ids.shape),
        "tokens": int(mask.sum()),
        "padded_tokens": int(ids.numel()),
        "targets": int((labels[:, 1:] != -100).sum()),
        "crc": crc,
    }


def _step_times(ends: list[float]) -> list[float]:
    """Per-step seconds from the times (since the loop began) at which each step ended."""
    return [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]


# ----- the HF worker (one fresh process) -------------------------------------------------------------------------
def hf_worker(recipe_path: Path, workdir: Path, marker: Path, out: Path) -> None:
    import peft
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from slimtune.train.order import BatchOrder
    from slimtune.train.recipe import load_model, load_recipe
    from slimtune.train.run import build_data

    recipe = load_recipe(recipe_path)
    tc, lora = recipe.train, recipe.adapter_config()
    steps = int(tc.steps)
    if tc.grad_accum != 1:
        raise SystemExit("the HF worker reproduces slimtune's batch order for grad_accum=1 only")
    model, tokenizer = load_model(recipe.model)
    data = build_data(recipe.data, tokenizer)  # slimtune's own data layer: the very rows the CLI trains on
    order = BatchOrder(len(data.train), tc.batch_size, tc.seed)
    batches = [order.next_global() for _ in range(steps)]
    rows = [
        {"input_ids": data.train[i]["input_ids"], "labels": data.train[i]["labels"]} for batch in batches for i in batch
    ]
    torch.manual_seed(tc.seed)
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )

    tokenizer.padding_side = "right"  # slimtune pads on the right
    hf_collate = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt")
    seen: list[dict[str, Any]] = []

    def collate(features: list[dict[str, Any]]) -> Any:
        batch = hf_collate(features)
        seen.append(batch_stats(batch))
        return batch

    clock: dict[str, Any] = {"begin": None, "ends": [], "lrs": []}

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock["begin"] = time.perf_counter()
            marker.touch()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock["lrs"].append(float(kw["optimizer"].param_groups[0]["lr"]))

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock["ends"].append(time.perf_counter() - clock["begin"])

    losses: list[float] = []

    class Recording(Trainer):  # type: ignore[misc]
        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float((result[0] if return_outputs else result).detach()))
            return result

    schedule = {"constant": "constant_with_warmup"}.get(tc.schedule, tc.schedule)
    args = TrainingArguments(
        output_dir=str(workdir / "hf_run"),
        max_steps=steps,
        per_device_train_batch_size=tc.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=tc.lr,
        weight_decay=tc.weight_decay,
        adam_beta1=tc.betas[0],
        adam_beta2=tc.betas[1],
        adam_epsilon=tc.eps,
        max_grad_norm=tc.max_grad_norm or 0.0,
        optim="adamw_torch",
        lr_scheduler_type=schedule,
        warmup_steps=tc.warmup_for(steps),
        seed=tc.seed,
        data_seed=tc.seed,
        train_sampling_strategy="sequential",
        use_cpu=True,
        bf16=False,
        fp16=False,
        eval_strategy="no",
        logging_strategy="steps",
        logging_steps=steps,
        save_strategy="steps",
        save_steps=steps,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
    )
    trainer = Recording(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
    t0 = time.perf_counter()
    output = trainer.train()
    train_call_s = time.perf_counter() - t0
    trainer.save_model(str(workdir / "hf_adapter"))  # the adapter, as slimtune leaves RUN/adapter/

    t1 = time.perf_counter()  # checks after the fact (this time is part of the end-to-end wall; reported)
    expected = [batch_stats(data.collate_fn([data.train[i] for i in batch])) for batch in batches]
    check_s = time.perf_counter() - t1
    result = {
        "loop_step_end_s": clock["ends"],
        "lrs": clock["lrs"],
        "losses": losses,
        "batches": seen,
        "expected_batches": expected,
        "batches_identical_to_slimtune_collator": seen == expected,
        "hf_train_runtime_s": float(output.metrics.get("train_runtime", float("nan"))),
        "train_call_s": train_call_s,
        "check_s": check_s,
        "torch_threads": torch.get_num_threads(),
        "train_examples": len(data.train),
    }
    out.write_text(json.dumps(result))


# ----- the driver ------------------------------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """Samples a child's VmRSS (and its anonymous and file-backed parts) until it exits; remembers the last
    sample before ``marker`` existed. File-backed pages are mostly the memory-mapped safetensors weights: they
    count in RSS once touched, so RSS before training depends on whether set-up already read every weight."""

    def __init__(self, pid: int, marker: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.marker = pid, marker
        self.started = time.perf_counter()
        self.before_train: dict[str, float] | None = None
        self.marker_seen_s: float | None = None
        self.peak = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
        self.samples = 0

    def _read(self) -> dict[str, float] | None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                found = {k: float(v.split()[0]) / 1024 for k, _, v in (x.partition(":") for x in f) if k in self.peak}
        except OSError:
            return None  # reaped
        return found if len(found) == len(self.peak) else None  # a zombie has no VmRSS

    def run(self) -> None:
        while (now := self._read()) is not None:
            self.samples += 1
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
            if self.marker_seen_s is None:
                if self.marker.exists():
                    self.marker_seen_s = time.perf_counter() - self.started
                else:
                    self.before_train = now
            time.sleep(POLL_S)


def _spawn(cmd: list[str], cwd: Path, marker: Path, log_base: Path) -> dict[str, Any]:
    """Run ``cmd`` as a fresh child; its own peak RSS comes from os.wait4's rusage of that one child."""
    with open(f"{log_base}.out", "w") as out, open(f"{log_base}.err", "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, env={**os.environ, **CHILD_ENV})
        sampler = RssSampler(proc.pid, marker)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join(timeout=5)
    if proc.returncode != 0:
        tail = Path(f"{log_base}.err").read_text()[-4000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    before = sampler.before_train or {}
    return {
        "e2e_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "rss_before_train_mib": before.get("VmRSS"),
        "rss_before_train_file_mib": before.get("RssFile"),
        "rss_before_train_anon_mib": before.get("RssAnon"),
        "setup_s": sampler.marker_seen_s,
        "sampled_peak_rss_mib": sampler.peak["VmRSS"],
        "sampled_peak_anon_mib": sampler.peak["RssAnon"],
        "sampled_peak_file_mib": sampler.peak["RssFile"],
        "rss_samples": sampler.samples,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
    }


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in lines if "step" in r and "eval" not in r]


def _side_common(
    ends: list[float], tokens: list[int], padded: list[int], losses: list[float | None], proc: dict[str, Any]
) -> dict[str, Any]:
    times = _step_times(ends)
    loop = ends[-1]
    steady = ends[-1] - ends[0]
    out = {
        **proc,
        "steps": len(ends),
        "loop_s": loop,
        "step_s": times,
        "step_median_s": statistics.median(times),
        "tokens": sum(tokens),
        "padded_tokens": sum(padded),
        "tokens_per_step": tokens,
        "tokens_per_s": sum(tokens) / loop,
        "padded_tokens_per_s": sum(padded) / loop,
        # without the first step (lazy optimizer state, first-touch allocations)
        "steady_tokens_per_s": sum(tokens[1:]) / steady if len(ends) > 1 and steady > 0 else None,
        "losses": losses,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "train_overhead_mib": None
        if proc["rss_before_train_mib"] is None
        else proc["peak_rss_mib"] - proc["rss_before_train_mib"],
    }
    return out


def run_slimtune(steps: int, work: Path) -> dict[str, Any]:
    run_dir = work / "slimtune_run"
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(steps, run_dir), sort_keys=False))
    proc = _spawn(
        [sys.executable, "-m", "slimtune", "train", str(recipe)], work, run_dir / "metrics.jsonl", work / "slimtune"
    )
    metrics = _read_metrics(run_dir / "metrics.jsonl")
    cumulative = [int(r["tokens"]) for r in metrics]
    tokens = [b - a for a, b in zip([0, *cumulative[:-1]], cumulative, strict=True)]
    # the run folder records non-padding tokens only; padded ones are filled in by _fill_padded
    res = _side_common([float(r["time"]) for r in metrics], tokens, [], [r["loss"] for r in metrics], proc)
    res.update(
        lrs=[float(r["lr"]) for r in metrics],
        adapter=_safetensors_shapes(run_dir / "adapter" / "adapter_model.safetensors"),
        checkpoints=sorted(p.name for p in (run_dir / "checkpoints").iterdir()),
    )
    return res


def run_hf(steps: int, work: Path) -> dict[str, Any]:
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(steps, work / "unused"), sort_keys=False))
    marker, out = work / "hf_train_begin", work / "hf_result.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "hf",
        "--recipe",
        str(recipe),
        "--workdir",
        str(work),
        "--marker",
        str(marker),
        "--result",
        str(out),
    ]
    proc = _spawn(cmd, work, marker, work / "hf")
    raw = json.loads(out.read_text())
    batches = raw.pop("batches")
    expected = raw.pop("expected_batches")
    res = _side_common(
        raw.pop("loop_step_end_s"),
        [b["tokens"] for b in batches],
        [b["padded_tokens"] for b in batches],
        raw.pop("losses"),
        proc,
    )
    res.update(
        raw,
        adapter=_safetensors_shapes(work / "hf_adapter" / "adapter_model.safetensors"),
        expected_tokens_per_step=[b["tokens"] for b in expected],
        expected_padded_per_step=[b["padded_tokens"] for b in expected],
        targets_per_step=[b["targets"] for b in expected],
        batch_shapes=[b["shape"] for b in batches],
    )
    return res


def _checks(s: dict[str, Any], h: dict[str, Any]) -> dict[str, Any]:
    """Did both sides train on the same tokens, with the same schedule and the same adapted modules?"""
    first = (s["first_loss"], h["first_loss"])
    return {
        "hf_batches_identical_to_slimtune_collator": h["batches_identical_to_slimtune_collator"],
        "slimtune_tokens_per_step_as_expected": s["tokens_per_step"] == h["expected_tokens_per_step"],
        "same_steps": s["steps"] == h["steps"],
        "lr_max_abs_diff": max(abs(a - b) for a, b in zip(s["lrs"], h["lrs"], strict=True)),
        "step1_loss_abs_diff": None if None in first else abs(first[0] - first[1]),
        "same_adapter_tensors": s["adapter"] == h["adapter"],
        "trainable_params": {
            k: sum(_prod(v) for v in side["adapter"].values()) for k, side in (("slimtune", s), ("hf", h))
        },
    }


def _fill_padded(s: dict[str, Any], h: dict[str, Any]) -> None:
    """slimtune's padded tokens: its own collator's batches (built by the HF worker in slimtune's order), once
    the non-padding tokens slimtune recorded per step show that it trained on those very batches."""
    same = s["tokens_per_step"] == h["expected_tokens_per_step"]
    s["padded_tokens"] = sum(h["expected_padded_per_step"]) if same else None
    s["padded_tokens_per_s"] = s["padded_tokens"] / s["loop_s"] if same else None


def _prod(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "loop_s",
        "e2e_s",
        "setup_s",
        "step_median_s",
        "tokens_per_s",
        "steady_tokens_per_s",
        "padded_tokens_per_s",
        "peak_rss_mib",
        "rss_before_train_mib",
        "rss_before_train_file_mib",
        "train_overhead_mib",
        "sampled_peak_anon_mib",
        "final_loss",
        "first_loss",
        "user_s",
        "sys_s",
    )
    out: dict[str, Any] = {}
    for k in keys:
        values = [r.get(k) for r in runs]
        out[k] = statistics.median(values) if values and all(v is not None for v in values) else None
    out["cpu_s"] = out["user_s"] + out["sys_s"] if out["user_s"] is not None else None
    out["tokens"], out["padded_tokens"] = runs[0]["tokens"], runs[0]["padded_tokens"]
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


ROWS = (  # (label, key, unit)
    ("training loop (steps only)", "loop_s", "s"),
    ("non-padding tokens / s (loop)", "tokens_per_s", "tok/s"),
    ("non-padding tokens / s (steps 2..N)", "steady_tokens_per_s", "tok/s"),
    ("padded tokens / s (loop)", "padded_tokens_per_s", "tok/s"),
    ("step, median", "step_median_s", "s"),
    ("end to end (process start to exit)", "e2e_s", "s"),
    ("start-up to first step (sampled)", "setup_s", "s"),
    ("peak RSS (wait4 ru_maxrss)", "peak_rss_mib", "MiB"),
    ("RSS just before training (sampled)", "rss_before_train_mib", "MiB"),
    ("  of which file-backed (mmapped weights)", "rss_before_train_file_mib", "MiB"),
    ("peak RSS - RSS before training", "train_overhead_mib", "MiB"),
    ("peak anonymous RSS (sampled)", "sampled_peak_anon_mib", "MiB"),
    ("CPU time user + sys", "cpu_s", "s"),
    ("loss, step 1", "first_loss", ""),
    ("loss, last step", "final_loss", ""),
)


NOTES = [
    "tokens/s count non-padding tokens (attention_mask) over the training loop: from the first step's start "
    "to the last step's end as each side records it (slimtune: metrics.jsonl 'time'; HF: a TrainerCallback, "
    "on_train_begin to on_step_end); start-up, model loading, data building and the final save are excluded "
    "there and included in end to end",
    "both sides train the same batches (HF: slimtune's rows in slimtune's BatchOrder, checked by CRC against "
    "slimtune's collator; slimtune: per-step token counts from metrics.jsonl against the same batches)",
    "LoRA A is initialised randomly on each side (B = 0), so losses after step 1 differ slightly",
    "the weights are memory-mapped safetensors: RSS counts them once touched. slimtune's adapt() reads every "
    "base weight (so RSS before training already holds them, file-backed), PEFT's first forward does; peak RSS "
    "compares fairly, 'peak RSS - RSS before training' does not",
    "on a shared machine wall-clock numbers move with the load (loadavg per run is recorded); CPU time user + sys "
    "is the whole process's",
]


def _table(summary: dict[str, dict[str, Any]]) -> str:
    s, h = summary["slimtune"], summary["hf"]
    lines = [f"| metric | {LABELS['slimtune']} | {LABELS['hf']} | slimtune / HF |", "|---|---:|---:|---:|"]

    def fmt(v: float | None, unit: str) -> str:
        if v is None:
            return "n/a"
        return f"{v:.4f}" if not unit else f"{v:,.0f} {unit}" if abs(v) >= 100 else f"{v:.2f} {unit}"

    for label, key, unit in ROWS:
        r = _ratio(s.get(key), h.get(key))
        lines.append(
            f"| {label} | {fmt(s.get(key), unit)} | {fmt(h.get(key), unit)} | {'n/a' if r is None else f'{r:.3f}'} |"
        )
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("slimtune", "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def run(ns: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()
    t0 = time.time()
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    checks: list[dict[str, Any]] = []
    pending: dict[str, dict[str, Any]] = {}
    for r in range(ns.rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:  # ABBA, so a trend in load hits both alike
            load = os.getloadavg()
            print(f"  round {r + 1}/{ns.rounds}: {LABELS[side]} ({ns.steps} steps), loadavg {load[0]:.2f}", flush=True)
            with tempfile.TemporaryDirectory(prefix=f"cpu_train_{side}_") as tmp:
                res = (run_slimtune if side == "slimtune" else run_hf)(ns.steps, Path(tmp))
            res["loadavg_before"] = load
            print(
                f"    loop {res['loop_s']:.1f} s, {res['tokens_per_s']:.0f} tok/s, e2e {res['e2e_s']:.1f} s, "
                f"peak RSS {res['peak_rss_mib']:.0f} MiB, loss {res['first_loss']:.4f} -> {res['final_loss']:.4f}",
                flush=True,
            )
            runs[side].append(res)
            pending[side] = res
        checks.append(_checks(pending["slimtune"], pending["hf"]))
        for res in pending.values():  # the tensor shapes are compared; keep only their count
            res["adapter_tensors"] = len(res.pop("adapter"))
    for s_run, h_run in zip(runs["slimtune"], runs["hf"], strict=True):
        _fill_padded(s_run, h_run)
    summary = {s: _summarise(runs[s]) for s in SIDES}
    table = _table(summary)
    s, h = summary["slimtune"], summary["hf"]
    ok_tokens = all(
        c["hf_batches_identical_to_slimtune_collator"] and c["slimtune_tokens_per_step_as_expected"] for c in checks
    )
    result = {
        "benchmark": "cpu_train",
        "issue": 4,
        "machine": machine(),
        "versions": _versions(),
        "git": _git(),
        "settings": {
            "model": "SmolLM2-135M-Instruct",
            "dtype": "float32",
            "method": "LoRA",
            "r": RANK,
            "alpha": ALPHA,
            "targets": "all-linear",
            "lora_dropout": 0.0,
            "data": "builtin:chatterbot train",
            "max_length": MAX_LENGTH,
            "padding": "dynamic, right, to the longest in the batch",
            "batch": BATCH,
            "steps": ns.steps,
            "lr": LR,
            "schedule": "cosine",
            "warmup_steps": int(WARMUP_RATIO * ns.steps),
            "max_grad_norm": 1.0,
            "optimizer": "AdamW (torch)",
            "seed": SEED,
            "rounds": ns.rounds,
            "quick": ns.quick,
            "recipe": recipe_dict(ns.steps, Path("RUN")),
            "slimtune_command": "python -m slimtune train recipe.yaml",
            "hf_side": "peft.get_peft_model + transformers.Trainer, DataCollatorForSeq2Seq, sequential "
            "sampler over slimtune's batch order, save_steps=steps + save_model at the end",
        },
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "wall_s": time.time() - t0,
        "summary": summary,
        "ratios_slimtune_over_hf": {k: _ratio(s.get(k), h.get(k)) for _, k, _ in ROWS},
        "checks": checks,
        "notes": NOTES,
        "targets_met": {
            "faster_tokens_per_s": s["tokens_per_s"] > h["tokens_per_s"],
            "peak_rss_no_larger": s["peak_rss_mib"] <= h["peak_rss_mib"],
            "same_tokens": ok_tokens,
            "same_schedule": all(c["lr_max_abs_diff"] <= 1e-9 for c in checks),
            "same_adapter": all(c["same_adapter_tensors"] for c in checks),
            "step1_loss_agrees": all(
                c["step1_loss_abs_diff"] is not None and c["step1_loss_abs_diff"] <= LOSS_TOL for c in checks
            ),
        },
        "runs": runs,
        "table_markdown": table,
    }
    print(table)
    print(
        f"tokens: {s['tokens']} non-padding of {h['padded_tokens']} processed per run "
        f"({s['tokens'] / h['padded_tokens']:.1%}); checks: {json.dumps(checks[-1])}"
    )
    print("targets met:", json.dumps(result["targets_met"]))
    print(f"loadavg start {load_start}, end {result['loadavg_end']}")
    return result


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps per run")
    ap.add_argument("--rounds", type=int, default=1, help="runs per side; sides alternated ABBA when > 1")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 steps, 1 round")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", choices=["hf"], help=argparse.SUPPRESS)
    for name in ("--recipe", "--workdir", "--marker", "--result"):
        ap.add_argument(name, type=Path, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.quick:
        ns.steps, ns.rounds = 3, 1
    if ns.steps < 1 or ns.rounds < 1:
        ap.error("--steps and --rounds must be positive")
    return ns


def main() -> None:
    ns = _parse()
    if ns.worker == "hf":
        hf_worker(ns.recipe, ns.workdir, ns.marker, ns.result)
        return
    result = run(ns)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
