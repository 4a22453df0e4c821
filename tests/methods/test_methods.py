"""Method-specific behaviour: trainable counts equal each method's formula, clear errors, combinations."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import slimtune as st
from slimtune.train.optim import b_role_tensors
from tests.conftest import TOL, model_inputs, output_of, randomize_adapters, tiny_bert, tiny_gpt2, tiny_llama

F32 = TOL[torch.float32]
# tiny Llama: hidden 64, MLP 128, 2 layers, KV dim 32 (2 heads of 16); tiny BERT: hidden 64, MLP 128, 2 layers
H, M, L, KV = 64, 128, 2, 32


def test_dora_count_is_lora_plus_one_magnitude_per_output() -> None:
    model = st.adapt(tiny_llama(), st.LoraConfig(r=4, targets=("q_proj", "v_proj"), use_dora=True))
    lora = L * (4 * (H + H) + 4 * (H + KV))
    assert model.parameter_report().trainable == lora + L * (H + KV)


def test_ia3_count_is_key_value_outputs_plus_ffn_inputs() -> None:
    assert st.adapt(tiny_llama(), st.IA3Config()).parameter_report().trainable == L * (KV + KV + M)
    # BERT: key, value (H each), attention.output.dense and output.dense are both "output.dense" (inputs H, M)
    assert st.adapt(tiny_bert(), st.IA3Config()).parameter_report().trainable == L * (H + H + H + M)


def test_bitfit_trains_every_bias_and_refuses_llama() -> None:
    bert = tiny_bert()
    biases = sum(p.numel() for n, p in bert.named_parameters() if n.endswith(".bias"))
    assert st.adapt(bert, st.BitFitConfig()).parameter_report().trainable == biases
    llama = tiny_llama()
    with pytest.raises(st.ConfigError, match="no bias terms"):
        st.adapt(llama, st.BitFitConfig())
    assert not any(p.requires_grad is False for p in llama.parameters())  # flags restored


def test_bottleneck_counts_and_placement_table() -> None:
    model = st.adapt(tiny_llama(), st.BottleneckConfig(kind="houlsby", reduction_factor=8))
    width = H // 8
    per_adapter = H * width + width + width * H + H
    assert model.parameter_report().trainable == L * 2 * per_adapter
    pfeiffer = st.adapt(tiny_gpt2(), st.BottleneckConfig(kind="pfeiffer", reduction_factor=8))
    assert [p for p, _ in pfeiffer.adapter_layers()] == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    from transformers import MistralConfig

    other = tiny_llama()
    other.config.model_type = "t5"  # an architecture the table does not know
    with pytest.raises(st.ConfigError, match="add its attention-output and feed-forward-output module patterns"):
        st.adapt(other, st.BottleneckConfig())
    assert MistralConfig  # the table names architectures by transformers' model_type


def test_selective_first_and_last_blocks() -> None:
    model = st.adapt(tiny_llama(), st.SelectiveConfig(first_k=1))
    block = sum(p.numel() for p in tiny_llama().model.layers[0].parameters())
    assert model.parameter_report().trainable == block
    with pytest.raises(st.ConfigError, match="exceeds the 2 blocks"):
        st.adapt(tiny_llama(), st.SelectiveConfig(first_k=2, last_k=1))
    with pytest.raises(st.ConfigError, match="would train nothing"):
        st.SelectiveConfig()


def test_modules_to_save_copies_are_exclusive_and_disable_restores() -> None:
    base = tiny_bert()
    reference = copy.deepcopy(base)
    cfg = st.LoraConfig(r=2, targets=("query",), modules_to_save=("classifier",))
    model = st.adapt(base, cfg)
    model.add_adapter("b", cfg)
    randomize_adapters(model)
    inputs = model_inputs("bert")
    with model.disabled():
        torch.testing.assert_close(output_of(model, inputs), output_of(reference, inputs), atol=0, rtol=0)
    model.set_active(["default", "b"])
    with pytest.raises(st.AdapterStateError, match="activate one"):
        output_of(model, inputs)


def test_combination_of_methods_by_list(tmp_path: Path) -> None:
    base = tiny_bert()
    reference = copy.deepcopy(base)
    model = st.adapt(base, [st.LoraConfig(r=2, targets=("query", "value")), st.BitFitConfig()])
    assert model.active_adapters == ("default", "default_bitfit")
    randomize_adapters(model)
    inputs = model_inputs("bert")
    both = output_of(model, inputs)
    model.save_adapter(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "default_bitfit").is_dir()
    loaded = st.load_adapter(copy.deepcopy(reference), tmp_path)
    loaded = st.load_adapter(loaded, tmp_path / "default_bitfit", name="default_bitfit")
    loaded.set_active(["default", "default_bitfit"])
    torch.testing.assert_close(output_of(loaded, inputs), both, atol=0, rtol=0)
    model.merge()
    torch.testing.assert_close(output_of(model, inputs), both, **F32)


def test_combination_failure_leaves_model_unchanged() -> None:
    base = tiny_llama()
    names = [n for n, _ in base.named_modules()]
    with pytest.raises(st.ConfigError, match="no bias terms"):
        st.adapt(base, [st.LoraConfig(r=2), st.BitFitConfig()])
    assert [n for n, _ in base.named_modules()] == names


def test_loraplus_groups_find_b_through_the_adapter_interface() -> None:
    model = st.adapt(tiny_llama(), st.LoraConfig(r=2, targets=("q_proj", "embed_tokens")))
    b = {id(t) for t in b_role_tensors(model)}
    expected = {id(p) for n, p in model.named_parameters() if ".lora_B." in n or "lora_embedding_B" in n}
    assert b == expected and len(b) == L + 1  # one B per q_proj, one for the embedding


def test_dora_merge_unmerge_restores_weights() -> None:
    model = st.adapt(tiny_llama(), st.LoraConfig(r=4, use_dora=True, targets=("q_proj",)))
    randomize_adapters(model, std=0.2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    model.merge()
    model.unmerge()
    after = dict(model.named_parameters())
    for n, value in before.items():
        torch.testing.assert_close(after[n], value, **F32)


def test_ia3_gpt2_conv1d_merge_equivalence() -> None:
    model = st.adapt(tiny_gpt2(), st.IA3Config())
    randomize_adapters(model, std=0.3)
    inputs = model_inputs("gpt2")
    expected = output_of(model, inputs)
    torch.testing.assert_close(output_of(model.merge_and_unload(), inputs), expected, **F32)
