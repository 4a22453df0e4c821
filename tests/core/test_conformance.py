"""Every case of the table runs through the same conformance checks (STYLE.md, point 8)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

import slimtune as st
from tests.conftest import BUILDERS, TOL, model_inputs, output_of, randomize_adapters, snapshot

F32 = TOL[torch.float32]


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    config: st.AdapterConfig
    mergeable: bool = True
    exact_io: bool = True  # PiSSA/OLoRA save as a rank-2r plain LoRA: same function, other rounding
    stackable: bool = True  # full copies of one module cannot be active twice
    mixed: bool = True


CASES = [
    Case("llama-all-linear", "llama", st.LoraConfig(r=4, alpha=8)),
    Case("llama-qv-patterns", "llama", st.LoraConfig(r=4, targets=("q_proj", "v_proj"),
                                                     rank_pattern={"v_proj": 8}, alpha_pattern={"q_proj": 2.0})),
    Case("llama-regex-layer-rslora", "llama", st.LoraConfig(r=6, targets=r".*\.(q|k|down)_proj", layers=(1,),
                                                            use_rslora=True, init="gaussian")),
    Case("llama-embedding", "llama", st.LoraConfig(r=4, targets=("embed_tokens", "o_proj"))),
    Case("llama-exclude", "llama", st.LoraConfig(r=4, exclude=("gate_proj", "up_proj"))),
    Case("bert-bias-lora-only", "bert", st.LoraConfig(r=4, targets=("query", "value"), bias="lora_only")),
    Case("bert-bias-all-dropout", "bert", st.LoraConfig(r=4, targets=("query", "key"), bias="all", dropout=0.1)),
    Case("gpt2-conv1d", "gpt2", st.LoraConfig(r=4, targets=("c_attn", "c_proj", "c_fc"))),
    Case("llama-dora", "llama", st.LoraConfig(r=4, targets=("q_proj", "v_proj", "down_proj"), use_dora=True)),
    Case("gpt2-dora", "gpt2", st.LoraConfig(r=4, targets=("c_attn", "c_fc"), use_dora=True)),
    Case("llama-pissa", "llama", st.LoraConfig(r=4, targets=("q_proj", "o_proj"), init="pissa"), exact_io=False),
    Case("llama-olora", "llama", st.LoraConfig(r=4, targets=("k_proj", "up_proj"), init="olora"), exact_io=False),
    Case("llama-ia3", "llama", st.IA3Config()),
    Case("bert-ia3", "bert", st.IA3Config()),
    Case("gpt2-ia3", "gpt2", st.IA3Config()),
    Case("bert-bitfit", "bert", st.BitFitConfig()),
    Case("gpt2-bitfit", "gpt2", st.BitFitConfig(exclude=("ln_f",))),
    Case("llama-houlsby", "llama", st.BottleneckConfig(kind="houlsby", reduction_factor=4), mergeable=False),
    Case("bert-pfeiffer", "bert", st.BottleneckConfig(reduction_factor=8, nonlinearity="gelu"), mergeable=False),
    Case("gpt2-houlsby", "gpt2", st.BottleneckConfig(kind="houlsby", nonlinearity="swish"), mergeable=False),
    Case("bert-lora-modules-to-save", "bert", st.LoraConfig(r=4, targets=("query", "value"),
                                                            modules_to_save=("classifier",)), stackable=False),
    Case("llama-selective", "llama", st.SelectiveConfig(targets=("lm_head",), last_k=1), stackable=False,
         mixed=False),
]


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def _adapted(case: Case, seed: int = 3) -> tuple[st.AdaptedModel, torch.nn.Module]:
    base = BUILDERS[case.kind]()
    reference = copy.deepcopy(base)
    model = st.adapt(base, case.config)
    randomize_adapters(model, seed=seed)
    model.eval()
    return model, reference


def test_fresh_adapter_is_an_exact_no_op(case: Case) -> None:
    base = BUILDERS[case.kind]()
    inputs = model_inputs(case.kind)
    before = output_of(base, inputs)
    model = st.adapt(base, case.config)
    # PiSSA/OLoRA start at B0 A0 - B0 A0: zero in exact arithmetic, rounding in float
    tol = {"atol": 0, "rtol": 0} if case.exact_io else F32
    torch.testing.assert_close(output_of(model, inputs), before, **tol)


def test_adapter_changes_output_and_disable_restores_base(case: Case) -> None:
    model, reference = _adapted(case)
    inputs = model_inputs(case.kind)
    base_out = output_of(reference, inputs)
    out = output_of(model, inputs)
    assert (out - base_out).abs().max() > 1e-3 * base_out.abs().max()  # far above float noise
    with model.disabled():
        torch.testing.assert_close(output_of(model, inputs), base_out, atol=0, rtol=0)
    torch.testing.assert_close(output_of(model, inputs), out, atol=0, rtol=0)


def test_merged_equals_unmerged_equals_unloaded(case: Case) -> None:
    model, _ = _adapted(case)
    inputs = model_inputs(case.kind)
    unmerged = output_of(model, inputs)
    if not case.mergeable:
        before = snapshot(model)
        with pytest.raises(st.MergeError, match="cannot be merged"):
            model.merge()
        assert all(torch.equal(v, snapshot(model)[k]) for k, v in before.items())
        return
    model.merge()
    merged = output_of(model, inputs)
    model.merge()  # idempotent
    torch.testing.assert_close(output_of(model, inputs), merged, atol=0, rtol=0)
    torch.testing.assert_close(merged, unmerged, **F32)
    model.unmerge()
    model.unmerge()
    torch.testing.assert_close(output_of(model, inputs), unmerged, **F32)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, st.AdapterLayer) for m in plain.modules())
    torch.testing.assert_close(output_of(plain, inputs), unmerged, **F32)


def test_save_load_round_trip_is_exact(case: Case, tmp_path) -> None:
    model, reference = _adapted(case)
    inputs = model_inputs(case.kind)
    expected = output_of(model, inputs)
    model.save_adapter(tmp_path)
    loaded = st.load_adapter(copy.deepcopy(reference), tmp_path)
    tol = {"atol": 0, "rtol": 0} if case.exact_io else F32
    torch.testing.assert_close(output_of(loaded, inputs), expected, **tol)
    for key, value in model.adapter_state_dict("default").items():
        torch.testing.assert_close(loaded.adapter_state_dict("default")[key], value, atol=0, rtol=0)
    assert loaded.trainable_parameters() == []


def test_switching_and_stacking_adapters(case: Case) -> None:
    if not case.stackable:
        pytest.skip("two full copies of one module cannot be active together (tested in test_methods)")
    model, reference = _adapted(case, seed=3)
    other = st.adapt(copy.deepcopy(reference), case.config)
    randomize_adapters(other, seed=4)
    model.add_adapter("b", case.config)
    model.load_adapter_state("b", other.adapter_state_dict("default"))
    inputs = model_inputs(case.kind)
    out_a = output_of(model, inputs)
    model.set_active("b")
    torch.testing.assert_close(output_of(model, inputs), output_of(other.eval(), inputs), **F32)
    model.set_active(["default", "b"])
    both = output_of(model, inputs)
    assert (both - out_a).abs().max() > 1e-4
    if case.mergeable:
        model.merge()
        torch.testing.assert_close(output_of(model, inputs), both, **F32)
        model.unmerge()
    model.delete_adapter("b")
    assert model.active_adapters == ("default",)
    # unmerge subtracts what merge added, so the base weights may differ from the originals by rounding
    torch.testing.assert_close(output_of(model, inputs), out_a, **F32)


def test_adapter_layer_walk_finds_what_named_modules_finds(case: Case) -> None:
    model, _ = _adapted(case)
    if case.stackable:
        model.add_adapter("b", case.config)
    want = [(p, m) for p, m in model.model.named_modules() if isinstance(m, st.AdapterLayer)]
    got = model.adapter_layers()
    assert want and [p for p, _ in got] == [p for p, _ in want]
    assert all(a is b for (_, a), (_, b) in zip(got, want, strict=True))


def test_mixed_batch_rows_equal_single_adapter_outputs(case: Case) -> None:
    if not case.mixed:
        pytest.skip("whole blocks take batch-wide arguments; mixed rows are refused for them")
    model, reference = _adapted(case, seed=3)
    other = st.adapt(copy.deepcopy(reference), case.config)
    randomize_adapters(other, seed=5)
    model.add_adapter("b", case.config, trainable=False)
    model.load_adapter_state("b", other.adapter_state_dict("default"))
    inputs = model_inputs(case.kind, batch=5)
    rows = ["default", None, "b", "default", "b"]
    mixed = output_of(model, inputs, adapter_names=rows)
    singles = {"default": output_of(model, inputs), None: output_of(reference, inputs)}
    model.set_active("b")
    singles["b"] = output_of(model, inputs)
    for i, name in enumerate(rows):
        torch.testing.assert_close(mixed[i], singles[name][i], **F32)


def test_training_updates_only_adapter_parameters(case: Case) -> None:
    model, _ = _adapted(case)
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trained and frozen
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    inputs = model_inputs(case.kind)
    out = model(**inputs).logits
    out.float().pow(2).mean().backward()
    optimizer.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(not torch.equal(params[n], v) for n, v in trained.items())


def test_trainable_count_matches_formula() -> None:
    base = BUILDERS["llama"]()
    r, hidden, inter, kv = 4, 64, 128, 32  # kv: 2 heads of 16
    model = st.adapt(base, st.LoraConfig(r=r, rank_pattern={"down_proj": 2}))
    per_layer = (r * (hidden + hidden) * 2  # q, o
                 + r * (hidden + kv) * 2  # k, v
                 + r * (hidden + inter) * 2  # gate, up
                 + 2 * (inter + hidden))  # down at rank 2
    report = model.parameter_report()
    assert report.trainable == 2 * per_layer == sum(p.numel() for p in model.trainable_parameters())
    assert report.by_type["LoraLinear"][0] == report.trainable
    assert "LoraLinear" in str(report)
    assert report.total == sum(p.numel() for p in model.parameters())


def test_base_is_not_copied() -> None:
    base = BUILDERS["llama"]()
    weight = base.model.layers[0].self_attn.q_proj.weight
    model = st.adapt(base, st.LoraConfig(r=2))
    assert model.model is base
    assert base.model.layers[0].self_attn.q_proj.base_layer.weight is weight


def test_snapshot_helper_detects_change() -> None:
    # guard for the helper the error tests rely on
    base = BUILDERS["llama"]()
    before = snapshot(base)
    with torch.no_grad():
        base.model.norm.weight.add_(1.0)
    assert not torch.equal(before["model.norm.weight"], snapshot(base)["model.norm.weight"])
