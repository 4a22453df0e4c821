"""The demo: the whole life of a LoRA fine-tune on the embedded default, on a laptop CPU.

SmolLM2-135M-Instruct learns the bundled chatterbot question/answer pairs; it is measured before and after
on held-out pairs (in distribution) and on held-out topics (out of distribution), with sample answers, and
the adapter is saved in the PEFT layout. This module wires the layers together (as the CLI may)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import slimtune as st
from slimtune.data import DataSpec, build_dataset, collator_for, load_and_validate
from slimtune.embedded import load_smollm2
from slimtune.formats.safe import write_json
from slimtune.train import TrainConfig, Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    out_dir: Path = Path("runs/demo")
    """Where the run folder (adapter, checkpoints, metrics, summary) goes."""
    steps: int = 60
    """Optimizer steps; 60 x batch 8 takes a few minutes on 2 CPU cores."""
    batch_size: int = 8
    max_length: int = 96
    lr: float = 1e-3
    r: int = 16
    alpha: float = 32.0
    eval_rows: int = 96
    """Held-out pairs (and OOD pairs) scored before and after."""
    samples: int = 3
    max_new_tokens: int = 32
    seed: int = 0


@dataclass
class DemoResult:
    run_dir: Path
    adapter_dir: Path
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    losses: list[float | None]
    answers: list[dict[str, str]] = field(default_factory=list)
    parameters: str = ""
    seconds: float = 0.0
    scan: dict[str, Any] = field(default_factory=dict)
    """Governance: contamination of the training pairs against each evaluation set, PII hits, licence."""
    registry: dict[str, Any] = field(default_factory=dict)
    """Where the adapter went in the registry, and what production points at."""


def run_demo(config: DemoConfig) -> DemoResult:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    base, tokenizer = load_smollm2()
    data = _data(tokenizer, config)
    model = st.adapt(base, st.LoraConfig(r=config.r, alpha=config.alpha, targets="all-linear"))
    train_cfg = TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr, schedule="cosine",
                            warmup_ratio=0.1, seed=config.seed, eval_every=None, log_every=5,
                            checkpoint_every=max(10, config.steps // 3))
    trainer = Trainer(model, train_cfg, data["train"], data["collate"], run_dir=config.out_dir,
                      eval_data={"held_out": data["held_out"], "ood_topics": data["ood"]},
                      lineage={"datasets": [data["report"]], "demo": True})
    scan = _scan(config.out_dir, data["rows"])
    questions = [row["question"] for row in data["samples"]]
    with model.disabled():
        before = _scores(trainer, data)
        answers_before = _answers(model, tokenizer, questions, config.max_new_tokens)
    result = trainer.fit()
    model.eval()
    after = _scores(trainer, data)
    answers_after = _answers(model, tokenizer, questions, config.max_new_tokens)
    answers = [{"question": q, "reference": r["answer"], "before": b, "after": a}
               for q, r, b, a in zip(questions, data["samples"], answers_before, answers_after, strict=True)]
    adapter_dir = result.adapter_dir or config.out_dir / "adapter"
    write_json(config.out_dir / "eval.json", {"metrics": after})
    from slimtune.governance import write_card

    write_card(adapter_dir, after, licence="apache-2.0")
    registry = _register(config.out_dir, scan)
    demo = DemoResult(config.out_dir, adapter_dir, before, after, list(result.losses), answers,
                      str(model.parameter_report()), time.perf_counter() - started, scan, registry)
    write_json(config.out_dir / "demo_summary.json", _summary_json(demo))
    return demo


def _data(tokenizer: Any, config: DemoConfig) -> dict[str, Any]:
    train, report = build_dataset(DataSpec("builtin:chatterbot", split="train", seed=config.seed), tokenizer,
                                  config.max_length)
    held_out, _ = build_dataset(DataSpec("builtin:chatterbot", split="test", seed=config.seed,
                                         max_rows=config.eval_rows), tokenizer, config.max_length)
    ood, _ = build_dataset(DataSpec("builtin:chatterbot", split="ood", seed=config.seed,
                                    max_rows=config.eval_rows), tokenizer, config.max_length)
    rows, _ = load_and_validate(DataSpec("builtin:chatterbot", split="test", seed=config.seed))
    samples = [{"question": _field(r, "question"), "answer": _field(r, "answer")} for r in rows[: config.samples]]
    splits = {split: load_and_validate(DataSpec("builtin:chatterbot", split=split, seed=config.seed))[0]
              for split in ("train", "test", "ood")}
    return {"train": train, "held_out": held_out, "ood": ood, "collate": collator_for(report, tokenizer),
            "report": report.as_dict(max_listed=10), "samples": samples, "rows": splits}


def _scan(out_dir: Path, splits: dict[str, list[Any]]) -> dict[str, Any]:
    """Export the splits as JSONL (what the scan reads) and check the training pairs against both eval sets."""
    import json

    from slimtune.formats.safe import atomic_file
    from slimtune.governance import scan_dataset

    files = {}
    for split, rows in splits.items():
        files[split] = out_dir / "data" / f"chatterbot_{split}.jsonl"
        with atomic_file(files[split], "w") as f:
            for row in rows:
                f.write(json.dumps({"question": _field(row, "question"), "answer": _field(row, "answer")}) + "\n")
    report = scan_dataset([files["train"]], {"held_out": [files["test"]], "ood_topics": [files["ood"]]},
                          licences="BSD-3-Clause", base_model_licence="Apache-2.0", poisoning=False)
    report.write_json(out_dir / "data_scan.json")
    return report.to_dict()


def _register(out_dir: Path, scan: dict[str, Any]) -> dict[str, Any]:
    """Version the run in a registry beside it and promote it to production (the gate checks governance)."""
    from slimtune.registry import Registry

    registry = Registry(out_dir / "registry", actor="slimtune-demo")
    ref = registry.add(out_dir, "demo-chat", scans={"data": {"status": "passed"}})
    registry.promote(f"demo-chat:{ref.version}", to="production")
    return {"root": str(out_dir / "registry"), "version": ref.version,
            "production": registry.show("demo-chat@production").version}


def _field(row: Any, name: str) -> str:
    data = row.data if hasattr(row, "data") else row
    if name in data:
        return str(data[name])
    messages = data.get("messages", [])
    role = "user" if name == "question" else "assistant"
    return next((str(m["content"]) for m in messages if m.get("role") == role), "")


def _scores(trainer: Trainer, data: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {name: trainer.evaluate(data[key]) for name, key in (("held_out", "held_out"), ("ood_topics", "ood"))}


def _answers(model: st.AdaptedModel, tokenizer: Any, questions: Sequence[str], max_new_tokens: int) -> list[str]:
    model.eval()
    out: list[str] = []
    for q in questions:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def _summary_json(demo: DemoResult) -> dict[str, Any]:
    return {"run_dir": str(demo.run_dir), "adapter_dir": str(demo.adapter_dir), "before": demo.before,
            "after": demo.after, "losses": demo.losses, "answers": demo.answers, "seconds": round(demo.seconds, 1),
            "registry": demo.registry}
