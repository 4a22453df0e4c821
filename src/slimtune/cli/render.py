"""Rendering of library results for the terminal (rich tables); only the CLI calls these."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from slimtune.cli.demo import DemoResult


def render_demo(console: Console, demo: DemoResult) -> None:
    console.print(demo.parameters)
    first = next((x for x in demo.losses if x is not None), float("nan"))
    last = next((x for x in reversed(demo.losses) if x is not None), float("nan"))
    console.print(f"training loss: {first:.3f} -> {last:.3f} over {len(demo.losses)} steps")
    table = Table(title="evaluation (loss on answer tokens; lower is better)")
    for col in ("set", "loss before", "loss after", "ppl before", "ppl after"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for name, before in demo.before.items():
        after = demo.after[name]
        table.add_row(name, f"{before['loss']:.3f}", f"{after['loss']:.3f}", f"{before['perplexity']:.1f}",
                      f"{after['perplexity']:.1f}")
    console.print(table)
    for item in demo.answers:
        console.print(f"[bold]Q:[/] {item['question']}\n  [dim]reference:[/] {item['reference']}\n"
                      f"  [red]before:[/] {item['before']}\n  [green]after:[/]  {item['after']}")
    _render_scan(console, demo.scan)
    reg = demo.registry
    console.print(f"\nadapter (PEFT layout, with README.md card): {demo.adapter_dir}\n"
                  f"registry: {reg.get('root')} (demo-chat:{reg.get('version')}, production -> "
                  f"{reg.get('production')})\nrun folder: {demo.run_dir} (metrics.jsonl, checkpoints/, eval.json, "
                  f"data_scan.json, demo_summary.json)\ntook {demo.seconds:.0f} s")


def _render_scan(console: Console, scan: dict) -> None:
    evals = (scan.get("contamination") or {}).get("evals") or []
    parts = [f"{item.get('name')}: {item.get('fraction', 0.0):.1%}" for item in evals]
    if parts:
        console.print("data scan, evaluation items also in the training pairs: " + ", ".join(parts))
