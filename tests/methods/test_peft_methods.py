"""PEFT 0.21 as the reference for the method family: same weights, same float32 logits (1e-5), both ways."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import slimtune as st
from tests.conftest import BUILDERS, model_inputs, output_of, randomize_adapters

peft = pytest.importorskip("peft")

REF_TOL = {"atol": 1e-5, "rtol": 1e-5}

# id: (model kind, slimtune config, PEFT config factory)
CASES = {
    "llama-dora": ("llama", st.LoraConfig(r=4, targets=("q_proj", "v_proj", "down_proj"), use_dora=True),
                   lambda: peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                           use_dora=True)),
    "bert-dora": ("bert", st.LoraConfig(r=4, targets=("query", "value"), use_dora=True),
                  lambda: peft.LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"], use_dora=True)),
    "llama-ia3": ("llama", st.IA3Config(),
                  lambda: peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                         feedforward_modules=["down_proj"])),
    "bert-ia3": ("bert", st.IA3Config(),
                 lambda: peft.IA3Config(target_modules=["key", "value", "output.dense"],
                                        feedforward_modules=["output.dense"])),
    "gpt2-ia3": ("gpt2", st.IA3Config(),
                 lambda: peft.IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                                        fan_in_fan_out=True)),
    "bert-modules-to-save": ("bert", st.LoraConfig(r=4, targets=("query", "value"), modules_to_save=("classifier",)),
                             lambda: peft.LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"],
                                                     modules_to_save=["classifier"])),
    "llama-ia3-lm-head": ("llama", st.IA3Config(modules_to_save=("lm_head",)),
                          lambda: peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                 feedforward_modules=["down_proj"], modules_to_save=["lm_head"])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    kind, config, _ = CASES[case]
    base = BUILDERS[kind]()
    reference = copy.deepcopy(base)
    model = st.adapt(base, config)
    randomize_adapters(model)
    inputs = model_inputs(kind)
    ours = output_of(model.eval(), inputs)
    assert (ours - output_of(reference, inputs)).abs().max() > 1e-5
    model.save_adapter(tmp_path)
    theirs = peft.PeftModel.from_pretrained(reference, tmp_path).eval()
    torch.testing.assert_close(output_of(theirs, inputs), ours, **REF_TOL)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    kind, _, make_config = CASES[case]
    base = BUILDERS[kind]()
    reference = copy.deepcopy(base)
    theirs = peft.get_peft_model(base, make_config())
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05 + 0.02)
    theirs.eval()
    inputs = model_inputs(kind)
    expected = output_of(theirs, inputs)
    theirs.save_pretrained(tmp_path)
    ours = st.load_adapter(reference, tmp_path)
    torch.testing.assert_close(output_of(ours, inputs), expected, **REF_TOL)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_olora_after_conversion_match_peft(init: str, tmp_path: Path) -> None:
    """Both start from the same decomposition, move the same way, and save a plain LoRA for the original base."""
    base = BUILDERS["llama"]()
    original = copy.deepcopy(base)
    targets = ["q_proj", "v_proj", "up_proj"]
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=4, target_modules=targets,
                                                                         init_lora_weights=init))
    theirs.save_pretrained(tmp_path / "init")  # PEFT's conversion needs the initial adapter on disk
    ours = st.adapt(base, st.LoraConfig(r=4, alpha=4, targets=tuple(targets), init=init))
    inputs = model_inputs("llama")
    torch.testing.assert_close(output_of(ours, inputs), output_of(original, inputs), **REF_TOL)
    g = torch.Generator().manual_seed(5)
    ours_params = dict(ours.model.named_parameters())
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if p.requires_grad:
                step = torch.randn(p.shape, generator=g) * 0.02
                p.add_(step)
                ours_params[name.replace("base_model.model.", "")].add_(step)
    torch.testing.assert_close(output_of(ours, inputs), output_of(theirs.eval(), inputs), **REF_TOL)
    theirs.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    ours.save_adapter(tmp_path / "ours")
    from_peft = st.load_adapter(copy.deepcopy(original), tmp_path / "peft")
    from_ours = peft.PeftModel.from_pretrained(copy.deepcopy(original), tmp_path / "ours").eval()
    expected = output_of(ours.eval(), inputs)
    torch.testing.assert_close(output_of(from_peft, inputs), expected, **REF_TOL)
    torch.testing.assert_close(output_of(from_ours, inputs), expected, **REF_TOL)
