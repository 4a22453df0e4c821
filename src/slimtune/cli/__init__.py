"""The `slimtune` command: it parses, calls the library, and prints. Nothing else prints."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.logging import RichHandler

from slimtune._version import __version__
from slimtune.errors import SlimtuneError

console = Console()


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slimtune.cli.demo import DemoConfig, run_demo
    from slimtune.cli.render import render_demo

    config = DemoConfig(out_dir=Path(args.out))
    if args.quick:
        config = DemoConfig(out_dir=Path(args.out), steps=3, batch_size=4, eval_rows=8, samples=1, max_new_tokens=8)
    if args.steps:
        config = DemoConfig(**{**config.__dict__, "steps": args.steps})
    console.rule("slimtune demo: LoRA on SmolLM2-135M-Instruct, chatterbot Q&A, CPU")
    render_demo(console, run_demo(config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimtune", description="Parameter-efficient fine-tuning, end to end.")
    parser.add_argument("--version", action="version", version=f"slimtune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the whole life cycle on the embedded model and data")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default 60)")
    demo.add_argument("--quick", action="store_true", help="a tiny run that checks everything works")
    demo.set_defaults(func=_demo)
    from slimtune.cli.commands import add_parsers

    add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False, show_time=False)])
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except SlimtuneError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
