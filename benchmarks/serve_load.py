"""Load test of ``slimtune serve`` on loopback: SmolLM2-135M-Instruct with N LoRA adapters from a registry.

One run measures the same bounded load (default 200 concurrent completion requests with short prompts,
max_tokens 16, greedy) twice: spread
round-robin over 4 adapters (mixed-adapter batches), and against one adapter alone. It prints p50/p95/p99
latency, throughput and errors for both, and writes benchmarks/results/serve_load.json.

    python benchmarks/serve_load.py [--requests 200] [--adapters 4] [--max-tokens 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn

import slimtune as st
from slimtune.embedded import load_smollm2
from slimtune.registry import Registry
from slimtune.serve import ServeConfig, create_app

QUESTIONS = ["Q: What is the capital of France?\nA:", "Q: Name a primary colour.\nA:",
             "Q: How many legs does a spider have?\nA:", "Q: What is 2 + 2?\nA:", "Q: Say hello in Spanish.\nA:",
             "Q: What do bees make?\nA:", "Q: Which planet is red?\nA:", "Q: What is ice made of?\nA:"]
log = logging.getLogger("serve_load")


def build_registry(root: Path, n_adapters: int) -> list[str]:
    """N LoRA adapters (r=8 on q/v, small random deltas) of SmolLM2, registered as bench-0..N-1."""
    names = []
    with Registry(root / "reg", actor="bench") as reg:
        for i in range(n_adapters):
            base, _ = load_smollm2()
            model = st.adapt(base, st.LoraConfig(r=8, alpha=16, targets=("q_proj", "v_proj")))
            gen = torch.Generator().manual_seed(100 + i)
            with torch.no_grad():
                for p in model.trainable_parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.02)
            model.save_adapter(root / f"adapter-{i}")
            names.append(str(reg.add(root / f"adapter-{i}", f"bench-{i}")))
    return names


class Server:
    """uvicorn on a socket we bind ourselves, in a background thread."""

    def __init__(self, config: ServeConfig, model: Any, tokenizer: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        app = create_app(config, model, tokenizer)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


async def run_load(url: str, models: list[str], n: int, max_tokens: int) -> dict[str, Any]:
    """n concurrent completion requests, model i % len(models); latency of each, wall time, errors."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        async def one(i: int) -> tuple[float, int, int]:
            body = {"model": models[i % len(models)], "max_tokens": max_tokens, "prompt": QUESTIONS[i % len(QUESTIONS)]}
            start = time.perf_counter()
            reply = await client.post("/v1/completions", json=body)
            tokens = reply.json()["usage"]["completion_tokens"] if reply.status_code == 200 else 0
            return time.perf_counter() - start, reply.status_code, tokens

        start = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
    lat = sorted(r[0] for r in results)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, round(q * (len(lat) - 1)))]

    return {"requests": n, "adapters": len(models), "errors": sum(r[1] != 200 for r in results),
            "wall_s": wall, "throughput_rps": n / wall, "tokens_per_s": sum(r[2] for r in results) / wall,
            "p50_s": pct(0.50), "p95_s": pct(0.95), "p99_s": pct(0.99), "mean_s": statistics.fmean(lat)}


def batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("slimtune_batch_size_") and " " in line}
    return values.get("slimtune_batch_size_count", 0.0), values.get("slimtune_batch_size_sum", 0.0)


def measure(url: str, models: list[str], args: argparse.Namespace) -> dict[str, Any]:
    count0, sum0 = batch_stats(url)
    out = asyncio.run(run_load(url, models, args.requests, args.max_tokens))
    count1, sum1 = batch_stats(url)
    out["batches"] = count1 - count0
    out["mean_batch_size"] = (sum1 - sum0) / max(count1 - count0, 1)
    return out


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    head = f"{'scenario':<22}{'reqs':>6}{'errors':>8}{'p50 s':>9}{'p95 s':>9}{'p99 s':>9}{'req/s':>9}{'tok/s':>9}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:<22}{r['requests']:>6}{r['errors']:>8}{r['p50_s']:>9.2f}{r['p95_s']:>9.2f}"
                     f"{r['p99_s']:>9.2f}{r['throughput_rps']:>9.2f}{r['tokens_per_s']:>9.1f}")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--order", choices=["single-first", "mixed-first"], default="single-first")
    parser.add_argument("--hidden-every", type=int, default=4, help="monitor_hidden_every of the server")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_load.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        names = build_registry(Path(tmp), args.adapters)
        model, tokenizer = load_smollm2(device=args.device)
        config = ServeConfig(registry=Path(tmp) / "reg", base="builtin:smollm2", max_batch=args.max_batch,
                             max_wait_ms=10, request_timeout_s=900, max_tokens_cap=64, json_logs=False,
                             monitor_hidden_every=args.hidden_every)
        with Server(config, model, tokenizer) as server:
            asyncio.run(run_load(server.url, names, 2 * len(names), args.max_tokens))  # warm up, load adapters
            mixed = f"{len(names)} adapters mixed"
            if args.order == "single-first":
                rows = {"1 adapter alone": measure(server.url, names[:1], args)}
                rows[mixed] = measure(server.url, names, args)
            else:
                rows = {mixed: measure(server.url, names, args)}
                rows["1 adapter alone"] = measure(server.url, names[:1], args)
    print_table(rows)
    body = {"benchmark": "serve_load", "model": "SmolLM2-135M-Instruct (fp32)", "device": args.device,
            "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "order": args.order, "max_tokens": args.max_tokens, "max_batch": args.max_batch,
            "monitor_hidden_every": args.hidden_every,
            "load_average_at_end": os.getloadavg()[0], "results": rows,
            "mixed_over_single_p50": rows[f"{len(names)} adapters mixed"]["p50_s"] / rows["1 adapter alone"]["p50_s"],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    if any(r["errors"] for r in rows.values()):
        raise SystemExit("errors under load: see the table")


if __name__ == "__main__":
    main()
