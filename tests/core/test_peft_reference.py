"""PEFT 0.21 as the reference: same weights give the same float32 logits (1e-5), and each side loads what
the other saved."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import slimtune as st
from tests.conftest import BUILDERS, model_inputs, output_of, randomize_adapters

peft = pytest.importorskip("peft")

REF_TOL = {"atol": 1e-5, "rtol": 1e-5}

CASES = {
    "llama-rank-pattern": ("llama", dict(r=4, targets=("q_proj", "k_proj", "v_proj", "down_proj"),
                                         rank_pattern={"v_proj": 8}, alpha_pattern={"down_proj": 3.0})),
    "llama-rslora-embed": ("llama", dict(r=4, targets=("embed_tokens", "o_proj", "up_proj"), use_rslora=True)),
    "gpt2-conv1d": ("gpt2", dict(r=4, targets=("c_attn", "c_proj", "c_fc"))),
    "bert-bias": ("bert", dict(r=4, targets=("query", "value", "dense"), bias="lora_only", layers=(1,))),
}


def _peft_config(kw: dict) -> object:
    return peft.LoraConfig(
        r=kw["r"], lora_alpha=kw.get("alpha", 16.0), target_modules=list(kw["targets"]),
        rank_pattern=kw.get("rank_pattern", {}), alpha_pattern=kw.get("alpha_pattern", {}),
        use_rslora=kw.get("use_rslora", False), bias=kw.get("bias", "none"),
        layers_to_transform=list(kw["layers"]) if "layers" in kw else None, init_lora_weights=False,
    )


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("adapter_name", ["default", "other"])
def test_slimtune_adapter_loads_in_peft(case: str, adapter_name: str, tmp_path: Path) -> None:
    kind, kw = CASES[case]
    base = BUILDERS[kind]()
    reference = copy.deepcopy(base)
    model = st.adapt(base, st.LoraConfig(**kw), name=adapter_name)
    randomize_adapters(model)
    inputs = model_inputs(kind)
    ours = output_of(model, inputs)
    model.save_adapter(tmp_path)
    folder = tmp_path if adapter_name == "default" else tmp_path / adapter_name
    theirs = peft.PeftModel.from_pretrained(reference, folder, adapter_name=adapter_name).eval()
    torch.testing.assert_close(output_of(theirs, inputs), ours, **REF_TOL)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("adapter_name", ["default", "other"])
def test_peft_adapter_loads_in_slimtune(case: str, adapter_name: str, tmp_path: Path) -> None:
    kind, kw = CASES[case]
    base = BUILDERS[kind]()
    reference = copy.deepcopy(base)
    inputs = model_inputs(kind)
    base_out = output_of(base, inputs)
    theirs = peft.get_peft_model(base, _peft_config(kw), adapter_name=adapter_name).eval()
    with torch.no_grad():  # bias="lora_only" biases start equal to the base: move them
        for n, p in theirs.named_parameters():
            if p.requires_grad and n.endswith(".bias"):
                p.add_(0.1)
    expected = output_of(theirs, inputs)
    theirs.save_pretrained(tmp_path)
    folder = tmp_path if adapter_name == "default" else tmp_path / adapter_name
    ours = st.load_adapter(reference, folder, name=adapter_name)
    torch.testing.assert_close(output_of(ours, inputs), expected, **REF_TOL)
    assert (expected - base_out).abs().max() > 1e-4  # the adapter really does something


def test_same_weights_same_logits_and_merge_matches_peft() -> None:
    kind, kw = CASES["llama-rank-pattern"]
    base = BUILDERS[kind]()
    theirs = peft.get_peft_model(copy.deepcopy(base), _peft_config(kw)).eval()
    ours = st.adapt(base, st.LoraConfig(**kw))
    state = {k.replace("base_model.model.", "").replace(".default", ""): v
             for k, v in theirs.state_dict().items() if "lora_" in k}
    ours.load_adapter_state("default", state)
    inputs = model_inputs(kind)
    expected = output_of(theirs, inputs)
    torch.testing.assert_close(output_of(ours, inputs), expected, **REF_TOL)
    merged_theirs = output_of(theirs.merge_and_unload(), inputs)
    torch.testing.assert_close(output_of(ours.merge_and_unload(), inputs), merged_theirs, **REF_TOL)
