"""The verbs of the `slimtune` command: each parses nothing, calls the library, and prints the result."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown

from slimtune.errors import ConfigError

console = Console()


def train(args: argparse.Namespace) -> int:
    from slimtune.train.recipe import load_recipe
    from slimtune.train.run import run_recipe

    recipe = load_recipe(args.recipe, list(args.overrides))
    if args.policy:
        _governance_gate(recipe, args)
    result = run_recipe(recipe, run_dir=args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        losses = [x for x in result.losses if x is not None]
        console.print(f"trained {result.steps} steps ({result.stopped_reason}); loss {losses[0]:.4f} -> "
                      f"{losses[-1]:.4f}" if losses else f"trained {result.steps} steps ({result.stopped_reason})")
        console.print(f"model: {result.model_dir}" if result.model_dir else f"adapter: {result.adapter_dir}")
        for name, metrics in (result.evaluation or {}).items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
            console.print(f"[bold]{name}[/]: {shown}")
    return 0


def _governance_gate(recipe: Any, args: argparse.Namespace) -> None:
    """Scan the recipe's local data files against its evaluation files under the policy; a failed rule stops
    training before it starts (PolicyError), unless --override-reason is given, which the audit log records."""
    from slimtune.governance import gate

    def local(section: Any) -> list[str]:
        paths = section.get("path") if isinstance(section, dict) else None
        paths = [paths] if isinstance(paths, str) else list(paths or [])
        return [p for p in paths if not str(p).startswith("builtin:")]

    from slimtune.eval.plan import eval_plan
    from slimtune.train.recipe import data_eval_sets

    data = recipe.data
    sections = data_eval_sets(data.get("eval"))
    if recipe.eval is not None:  # the sets scored after training are checked for contamination too
        plan = eval_plan(recipe.to_dict(), latency=None, require_sets=False)
        sections.update({s.name: s.data for s in plan.suite.sets})
    against = {name: local(sec) for name, sec in sections.items() if local(sec)}
    train_files = local(data.get("train"))
    if not train_files:
        raise ConfigError("--policy needs local training files to scan; builtin corpora are scanned by the demo")
    run_dir = Path(args.out or recipe.output_dir)
    report = gate(train_files, against, policy=args.policy, audit=run_dir / "audit.jsonl",
                  override_reason=args.override_reason, subject=str(run_dir), licences=args.licence)
    run_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(run_dir / "data_scan.json")
    how = " (overridden, reason recorded)" if args.override_reason else ""
    console.print(f"governance gate passed{how}: {run_dir / 'data_scan.json'}")


def data_scan(args: argparse.Namespace) -> int:
    from slimtune.governance import load_policy, scan_dataset

    policy = load_policy(args.policy) if args.policy else None
    against: dict[str, list[str]] = {Path(p).stem: [p] for p in args.against}
    report = scan_dataset(args.paths, against, policy, licences=args.licence, base_model_licence=args.base_licence,
                          poisoning=not args.no_poisoning)
    out = Path(args.json) if args.json else Path("data_scan.json")
    report.write_json(out)
    console.print(Markdown(report.to_markdown()))
    console.print(f"JSON report: {out}")
    decision = getattr(report, "decision", None)
    return 1 if decision is not None and not decision.allowed else 0


def _registry(args: argparse.Namespace) -> Any:
    from slimtune.registry import Registry
    from slimtune.registry.uri import open_registry

    root = args.registry or os.environ.get("SLIMTUNE_REGISTRY")
    if not root:
        raise ConfigError("no registry given: pass --registry DIR or set SLIMTUNE_REGISTRY")
    if args.action == "add" and not Path(root, "registry.db").exists():
        return Registry(Path(root), actor=args.actor)
    return open_registry(root, actor=args.actor)


def registry(args: argparse.Namespace) -> int:
    from slimtune.registry import render

    reg = _registry(args)
    action = args.action
    if action == "add":
        ref = reg.add(Path(args.source), args.name)
        console.print(f"added {ref}")
    elif action == "list":
        console.print(Markdown(render.render_versions(reg.list(args.name))))
    elif action == "show":
        console.print(Markdown(render.render_version(reg.show(args.ref))))
    elif action == "history":
        console.print(Markdown(render.render_history(reg.history(args.name))))
    elif action == "diff":
        console.print(Markdown(render.render_diff(reg.diff(args.ref_a, args.ref_b))))
    elif action == "verify":
        report = reg.verify()
        console.print(Markdown(render.render_verify(report)))
        return 0 if report.ok else 1
    elif action == "gc":
        console.print(Markdown(render.render_gc(reg.gc(dry_run=args.dry_run))))
    elif action == "promote":
        _promote(reg, args)
    elif action == "rollback":
        reg.rollback(args.name, args.alias, reason=args.reason)
        console.print(f"{args.name}@{args.alias} now points at {reg.show(f'{args.name}@{args.alias}').version}")
    elif action == "delete":
        reg.delete(args.ref, reason=args.reason)
        console.print(f"deleted {args.ref}")
    return 0


def _promote(reg: Any, args: argparse.Namespace) -> None:
    from slimtune.registry import render
    from slimtune.registry.policy import PromotionPolicy

    if args.force and not args.reason:
        raise ConfigError("--force needs --reason: a forced promotion is logged with why")
    policy = PromotionPolicy(tolerance_abs=args.tolerance, tolerance_rel=args.tolerance_rel)
    result = reg.promote(args.ref, to=args.to, policy=policy, force_reason=args.reason if args.force else None)
    console.print(Markdown(render.render_promotion(result)))


def evaluate(args: argparse.Namespace) -> int:
    import yaml

    from slimtune.eval import evaluate_run

    suite = yaml.safe_load(Path(args.suite).read_text()) if args.suite else None
    prices = yaml.safe_load(Path(args.prices).read_text()) if args.prices else None
    latency = None if args.no_latency else True  # True: the recipe's eval.latency, else the default benchmark
    report = evaluate_run(args.run, suite=suite, prices=prices, latency=latency)
    for name, metrics in report.metrics.items():
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
        console.print(f"[bold]{name}[/]: {shown}")
    for kind, path in report.paths.items():
        console.print(f"{kind}: {path}")
    return 0


def ablate(args: argparse.Namespace) -> int:
    import yaml

    from slimtune.eval import run_ablation

    recipe = yaml.safe_load(Path(args.recipe).read_text())
    grid = yaml.safe_load(Path(args.grid).read_text())
    result = run_ablation(recipe, grid, Path(args.out), workers=args.workers, max_cells=args.max_cells)
    console.print(f"{len(result.ran)} cells run, {len(result.skipped)} already done, {len(result.failed)} failed, "
                  f"{len(result.pending)} pending; report: {Path(args.out) / 'ablation.html'}")
    return 1 if result.failed else 0


def serve(args: argparse.Namespace) -> int:
    from slimtune.serve import ServeConfig
    from slimtune.serve import serve as run_server

    config = ServeConfig(registry=Path(args.registry) if args.registry else None, base=args.base, host=args.host,
                         port=args.port, keys_file=Path(args.keys) if args.keys else None,
                         max_batch=args.max_batch, monitor_dir=Path(args.monitor_dir) if args.monitor_dir else None,
                         audit_log=Path(args.audit_log) if args.audit_log else None)
    console.print(f"serving {config.base} on http://{config.host}:{config.port} (OpenAI API under /v1, status /ui)")
    run_server(config)
    return 0


def monitor_report(args: argparse.Namespace) -> int:
    from slimtune.serve import drift_report

    body = drift_report(Path(args.monitor_dir), Path(args.out), registry=args.registry)
    drifted = [k for k, v in (body.get("adapters") or {}).items() if isinstance(v, dict) and v.get("drifted")]
    console.print(f"drift report: {Path(args.out) / 'drift_report.html'}; drifted: {drifted or 'none'}")
    return 0


def merge(args: argparse.Namespace) -> int:
    import torch

    import slimtune as st
    from slimtune.embedded.resolve import base_spec_for, load_base, num_labels_of
    from slimtune.formats.export import save_merged

    adapter = Path(args.adapter)
    model, tokenizer = load_base(base_spec_for(adapter, args.base), num_labels_of(adapter))
    adapted = st.load_adapter(model, adapter)
    ids = torch.randint(0, int(model.config.vocab_size), (2, 16), generator=torch.Generator().manual_seed(0))
    report = save_merged(adapted, tokenizer, Path(args.out), ids)
    console.print(f"merged model (transformers layout, safetensors): {report.out_dir}  "
                  f"({report.size_bytes / 2**20:.1f} MiB; max |merged - unmerged| = {report.max_abs_diff:.2e})")
    return 0


def export_onnx(args: argparse.Namespace) -> int:
    import slimtune as st
    from slimtune.embedded.resolve import base_spec_for, load_base, num_labels_of
    from slimtune.formats.export import export_onnx as do_export

    adapter = Path(args.adapter)
    model, tokenizer = load_base(base_spec_for(adapter, args.base), num_labels_of(adapter))
    merged = st.load_adapter(model, adapter).merge_and_unload()
    sample = None
    if tokenizer is not None:  # real text makes the int8 agreement check meaningful
        text = ["The quick brown fox jumps over the lazy dog while the farmer watches from the old barn door."] * 2
        sample = tokenizer(text, return_tensors="pt")["input_ids"]
    report = do_export(merged, Path(args.out), int(model.config.vocab_size), quantize=args.int8, sample_ids=sample)
    console.print_json(json.dumps(report.to_dict()))
    return 0


def add_parsers(sub: Any) -> None:
    """Register every verb but `demo` on the top-level subparsers."""
    p = sub.add_parser("train", help="fine-tune from a YAML recipe (also under torchrun)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=10")
    p.add_argument("--out", default=None, help="run folder (default: the recipe's output_dir)")
    p.add_argument("--policy", help="governance.yaml: scan the data first and refuse to train on a failed rule")
    p.add_argument("--override-reason", help="train despite failed rules; the reason goes into the audit log")
    p.add_argument("--licence", help="SPDX id of the training data, for the licence check")
    p.set_defaults(func=train)

    d = sub.add_parser("data", help="dataset governance").add_subparsers(dest="data_cmd", required=True)
    s = d.add_parser("scan", help="manifest, licence, contamination, PII and poisoning scan")
    s.add_argument("paths", nargs="+")
    s.add_argument("--against", nargs="*", default=[], help="evaluation files to check for contamination")
    s.add_argument("--policy", help="governance.yaml with thresholds")
    s.add_argument("--licence", help="SPDX id of the training data, if known")
    s.add_argument("--base-licence", help="licence of the base model (e.g. Apache-2.0)")
    s.add_argument("--json", help="where to write the JSON report (default data_scan.json)")
    s.add_argument("--no-poisoning", action="store_true", help="skip the in-memory poisoning scan")
    s.set_defaults(func=data_scan)

    _registry_parsers(sub)

    ev = sub.add_parser("eval", help="task metrics (ID / OOD / forgetting), efficiency, latency, cost of a run")
    ev.add_argument("run", help="a run folder or an adapter folder")
    ev.add_argument("--suite", help="YAML with the evaluation suite (default: the recipe's eval sets)")
    ev.add_argument("--prices", help="YAML price table: {currency: EUR, prices: {cpu: 0.08, h200: 4.0}}")
    ev.add_argument("--no-latency", action="store_true", help="skip the latency benchmark")
    ev.set_defaults(func=evaluate)

    ab = sub.add_parser("ablate", help="a grid of methods / ranks / targets / layers / lrs over seeds")
    ab.add_argument("recipe")
    ab.add_argument("--grid", required=True)
    ab.add_argument("--out", default="runs/ablation")
    ab.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ab.add_argument("--max-cells", type=int, default=None, help="run at most this many unfinished cells")
    ab.set_defaults(func=ablate)

    sv = sub.add_parser("serve", help="OpenAI-compatible server: many adapters on one base, monitored")
    sv.add_argument("--registry", help="registry folder the adapters are resolved in")
    sv.add_argument("--base", default="builtin:smollm2", help="builtin:smollm2 or a local model folder")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--keys", help="JSON file of hashed API keys (none: no authentication)")
    sv.add_argument("--max-batch", type=int, default=8)
    sv.add_argument("--monitor-dir", help="where per-request monitoring features are appended")
    sv.add_argument("--audit-log", help="JSONL audit log for automatic rollbacks")
    sv.set_defaults(func=serve)

    mo = sub.add_parser("monitor", help="drift monitoring").add_subparsers(dest="monitor_cmd", required=True)
    mr = mo.add_parser("report", help="drift per adapter against its reference profile, with plots")
    mr.add_argument("monitor_dir")
    mr.add_argument("--out", default="drift_report")
    mr.add_argument("--registry", help="registry holding the versions' profile.json")
    mr.set_defaults(func=monitor_report)

    m = sub.add_parser("merge", help="merge an adapter into its base: a plain transformers model")
    m.add_argument("adapter")
    m.add_argument("--out", required=True)
    m.add_argument("--base", help="builtin:smollm2, builtin:minilm or a local model folder (default: lineage)")
    m.set_defaults(func=merge)

    e = sub.add_parser("export", help="export a merged adapter").add_subparsers(dest="format", required=True)
    o = e.add_parser("onnx", help="ONNX (optionally int8), checked with onnxruntime")
    o.add_argument("adapter")
    o.add_argument("--out", required=True)
    o.add_argument("--base")
    o.add_argument("--int8", action="store_true", help="also write a dynamically int8-quantised copy")
    o.set_defaults(func=export_onnx)


def _registry_parsers(sub: Any) -> None:
    r = sub.add_parser("registry", help="versioned adapter registry")
    r.add_argument("--registry", help="registry folder (default: $SLIMTUNE_REGISTRY)")
    r.add_argument("--actor", help="who is acting, for the audit log (default: the user)")
    rs = r.add_subparsers(dest="action", required=True)
    a = rs.add_parser("add")
    a.add_argument("source", help="a run folder or an adapter folder")
    a.add_argument("--name", required=True)
    rs.add_parser("list").add_argument("name", nargs="?")
    rs.add_parser("show").add_argument("ref", help="NAME, NAME:VERSION or NAME@ALIAS")
    rs.add_parser("history").add_argument("name")
    df = rs.add_parser("diff")
    df.add_argument("ref_a")
    df.add_argument("ref_b")
    rs.add_parser("verify")
    rs.add_parser("gc").add_argument("--dry-run", action="store_true")
    pr = rs.add_parser("promote")
    pr.add_argument("ref")
    pr.add_argument("--to", required=True, help="alias, e.g. staging or production")
    pr.add_argument("--tolerance", type=float, default=0.0, help="allowed absolute regression per metric")
    pr.add_argument("--tolerance-rel", type=float, default=0.0, help="allowed relative regression per metric")
    pr.add_argument("--force", action="store_true", help="skip the gate (needs --reason, which is logged)")
    pr.add_argument("--reason")
    rb = rs.add_parser("rollback")
    rb.add_argument("name")
    rb.add_argument("--alias", required=True)
    rb.add_argument("--reason")
    de = rs.add_parser("delete")
    de.add_argument("ref")
    de.add_argument("--reason")
    r.set_defaults(func=registry)
