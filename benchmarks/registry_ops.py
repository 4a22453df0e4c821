"""Benchmark: the adapter registry's operations on an adapter of real size, and under concurrent use.

The adapter has the shapes of LoRA r=16 on every linear layer of SmolLM2-135M (30 layers, hidden 576,
GQA 9/3 heads, FFN 1536): 4.9M fp32 parameters, ~19.5 MB. Printed side by side from one run:

- add (copy into blobs, fsync, re-hash) against a plain ``shutil.copytree`` of the same folder;
- a verified checkout (every byte re-hashed) cold and cached, against the same plain copy;
- promote and rollback latency (the alias moves; no file is touched) against a cold checkout;
- 4 processes racing 25 promote/rollback operations each: operations per second, and a check that the
  alias history is one unbroken chain afterwards.

    python benchmarks/registry_ops.py            # writes benchmarks/results/registry_ops.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing as mp
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from slimtune.errors import RegistryError
from slimtune.registry import Registry

RESULTS = Path(__file__).parent / "results" / "registry_ops.json"
LAYERS, HIDDEN, KV, FFN, RANK = 30, 576, 192, 1536, 16
SHAPES = {
    "q_proj": (HIDDEN, HIDDEN),
    "k_proj": (KV, HIDDEN),
    "v_proj": (KV, HIDDEN),
    "o_proj": (HIDDEN, HIDDEN),
    "gate_proj": (FFN, HIDDEN),
    "up_proj": (FFN, HIDDEN),
    "down_proj": (HIDDEN, FFN),
}  # (out, in)


def make_adapter(folder: Path, seed: int, accuracy: float) -> int:
    """A LoRA adapter folder of SmolLM2-135M size; returns its parameter count."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        for name, (out_f, in_f) in SHAPES.items():
            block = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, in_f, generator=gen)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_f, RANK, generator=gen)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": 32, "target_modules": list(SHAPES)}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    lineage = {
        "base_model": "SmolLM2-135M-Instruct",
        "base_fingerprint": "f" * 64,
        "library_version": "0.1.0",
        "metrics": {"eval": {"accuracy": accuracy}},
    }
    (folder / "slimtune.json").write_text(json.dumps(lineage))
    return sum(t.numel() for t in tensors.values())


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Median wall time of fn() in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def racer(root: str, seed: int, ops: int, start: Any) -> None:
    with Registry(root, actor=f"racer{seed}", lock_timeout=60) as reg:
        start.wait()
        for i in range(ops):
            try:
                if (i + seed) % 2:
                    reg.promote(f"chat:{1 + (i + seed) % 3}", to="production", force_reason="benchmark")
                else:
                    reg.rollback("chat", "production")
            except RegistryError:  # a rollback with no previous version is a valid outcome here
                pass


def race(root: Path, workers: int, ops: int) -> dict[str, float]:
    ctx = mp.get_context("fork")
    start = ctx.Barrier(workers + 1)
    procs = [ctx.Process(target=racer, args=(str(root), s, ops, start)) for s in range(workers)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    with Registry(root) as reg:
        moves = [m for m in reg.history("chat").alias_moves if m.alias == "production"]
        unbroken = all(b.old_version == a.new_version for a, b in itertools.pairwise(moves))
        moves = [m for m in moves if m.actor.startswith("racer")]
        ok = reg.verify().ok
    return {
        "workers": workers,
        "ops_per_worker": ops,
        "seconds": round(elapsed, 3),
        "alias_moves": len(moves),
        "moves_per_s": round(len(moves) / elapsed, 1),
        "history_unbroken": unbroken,
        "verify_ok": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the race forces promotions on purpose; do not warn about each
    tmp = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    params = [make_adapter(tmp / f"a{i}", i, 0.7 + 0.01 * i) for i in range(3)]
    size = (tmp / "a0" / "adapter_model.safetensors").stat().st_size
    reg = Registry(tmp / "reg", actor="bench")
    copies = iter(range(1000))
    copy_s = timed(lambda: shutil.copytree(tmp / "a0", tmp / f"copy{next(copies)}"), repeat=5)
    add_s = timed(lambda: reg.add(tmp / "a1", "chat"), repeat=1)
    for i in (0, 2):
        reg.add(tmp / f"a{i}", "chat")
    dests = iter(range(1000))
    cold_s = timed(lambda: reg.materialize("chat:1", dest=tmp / f"out{next(dests)}"), repeat=5)
    reg.materialize("chat:2")
    warm_s = timed(lambda: reg.materialize("chat:2"), repeat=5)
    reg.promote("chat:1", to="production")

    def promote_then_rollback() -> None:
        reg.promote("chat:3", to="production", force_reason="bench")
        reg.rollback("chat", "production")

    move_s = timed(promote_then_rollback, repeat=20) / 2
    reg.close()
    race_result = race(tmp / "reg", workers=4, ops=25)
    result = {
        "benchmark": "registry_ops",
        "machine": platform.machine(),
        "adapter_params": params[0],
        "adapter_mb": round(size / 1e6, 1),
        "plain_copytree_s": round(copy_s, 4),
        "add_s": round(add_s, 4),
        "checkout_cold_verified_s": round(cold_s, 4),
        "checkout_cached_verified_s": round(warm_s, 4),
        "alias_move_ms": round(move_s * 1000, 2),
        "race": race_result,
    }
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"adapter: {params[0] / 1e6:.2f}M params, {size / 1e6:.1f} MB")
    print(f"plain copytree          {copy_s * 1000:8.1f} ms   (no hashing, no fsync)")
    print(f"registry add            {add_s * 1000:8.1f} ms   (copy + fsync + re-hash + commit)")
    print(f"verified checkout, cold {cold_s * 1000:8.1f} ms   vs plain copy {copy_s * 1000:.1f} ms")
    print(f"verified checkout, warm {warm_s * 1000:8.1f} ms   (re-hash of the cached folder)")
    print(f"promote or rollback     {move_s * 1000:8.2f} ms   vs cold checkout {cold_s * 1000:.1f} ms")
    r = race_result
    print(
        f"race: {r['workers']} processes, {r['alias_moves']} alias moves in {r['seconds']} s "
        f"({r['moves_per_s']}/s); history unbroken: {r['history_unbroken']}, verify ok: {r['verify_ok']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
