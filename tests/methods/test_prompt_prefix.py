"""Prompt tuning and prefix tuning against PEFT 0.21 on a tiny random GQA Llama: same weights give the same
float32 logits (1e-5) in both directions, greedy generation gives PEFT's tokens, and the usual conformance checks.

PEFT 0.21's own ``generate`` is broken for prompt learning on transformers 5 (it looks for ``past_key_values``,
which generate now calls ``cache``): prefix tuning generates the base model's tokens and prompt tuning re-inserts
the prompt at every step. The reference for generation is therefore greedy decoding through PEFT's forward.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import nn

import slimtune as st
from slimtune.core.layer import InputAdapter
from slimtune.formats.safe import read_json
from slimtune.methods.prefix import PrefixEncoder
from slimtune.methods.prompt import input_embeddings
from tests.conftest import model_inputs, output_of, randomize_adapters, snapshot, tiny_bert, tiny_llama

peft = pytest.importorskip("peft")

REF_TOL: dict[str, Any] = {"atol": 1e-5, "rtol": 1e-5}
N_VIRTUAL = 5
# tiny_llama: hidden 64, 2 layers, 4 heads, 2 key/value heads -> head_dim 16, kv_dim 32
HIDDEN, LAYERS, KV_DIM = 64, 2, 32


@dataclass(frozen=True)
class Case:
    id: str
    ours: st.AdapterConfig
    theirs: dict[str, Any]
    trainable: int
    """The method's formula for the number of trainable parameters on tiny_llama."""


_ENC = 24
CASES = [
    Case("prompt", st.PromptTuningConfig(num_virtual_tokens=N_VIRTUAL),
         dict(cls="PromptTuningConfig"), N_VIRTUAL * HIDDEN),
    Case("prefix", st.PrefixTuningConfig(num_virtual_tokens=N_VIRTUAL),
         dict(cls="PrefixTuningConfig"), N_VIRTUAL * LAYERS * 2 * KV_DIM),
    Case("prefix-projection", st.PrefixTuningConfig(num_virtual_tokens=N_VIRTUAL, prefix_projection=True,
                                                    encoder_hidden_size=_ENC),
         dict(cls="PrefixTuningConfig", prefix_projection=True, encoder_hidden_size=_ENC),
         N_VIRTUAL * KV_DIM + (KV_DIM + 1) * _ENC + (_ENC + 1) * LAYERS * 2 * KV_DIM),
]


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    with warnings.catch_warnings():  # PEFT and transformers warn about deprecated cache names
        warnings.simplefilter("ignore")
        yield


def peft_model(base: nn.Module, case: Case, adapter_name: str = "default") -> Any:
    kw = dict(case.theirs)
    cfg = getattr(peft, kw.pop("cls"))(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL, **kw)
    model = peft.get_peft_model(base, cfg, adapter_name=adapter_name).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def ours(case: Case, base: nn.Module | None = None, name: str = "default") -> st.AdaptedModel:
    model = st.adapt(base if base is not None else tiny_llama(), case.ours, name=name)
    randomize_adapters(model, std=0.5)
    return model


def adapter_params(model: st.AdaptedModel) -> dict[str, torch.Tensor]:
    module = model.input_adapters["default"]
    assert isinstance(module, InputAdapter)
    return module.adapter_parameters()


def greedy(model: nn.Module, inputs: dict[str, torch.Tensor], steps: int = 6) -> torch.Tensor:
    """Greedy decoding by full forward passes (no cache): the reference for ``generate``."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat((ids, nxt), 1), torch.cat((mask, torch.ones_like(nxt)), 1)
    return ids


def generate(model: nn.Module, inputs: dict[str, torch.Tensor], steps: int = 6) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=steps, do_sample=False)  # type: ignore[operator]


# ----- PEFT as the reference ---------------------------------------------------------------------------------
@pytest.mark.parametrize("adapter_name", ["default", "other"])
def test_slimtune_adapter_loads_in_peft(case: Case, adapter_name: str, tmp_path: Path) -> None:
    base = tiny_llama()
    reference = copy.deepcopy(base)
    inputs = model_inputs("llama")
    base_out = output_of(base, inputs)
    model = ours(case, base, adapter_name)
    expected = output_of(model, inputs)
    model.save_adapter(tmp_path)
    folder = tmp_path if adapter_name == "default" else tmp_path / adapter_name
    theirs = peft.PeftModel.from_pretrained(reference, folder, adapter_name=adapter_name).eval()
    torch.testing.assert_close(output_of(theirs, inputs), expected, **REF_TOL)
    assert (expected[:, -base_out.shape[1]:] - base_out).abs().max() > 1e-3  # the adapter really does something


def test_peft_adapter_loads_in_slimtune(case: Case, tmp_path: Path) -> None:
    base = tiny_llama()
    reference = copy.deepcopy(base)
    inputs = model_inputs("llama")
    theirs = peft_model(base, case)
    expected = output_of(theirs, inputs)
    theirs.save_pretrained(tmp_path)
    loaded = st.load_adapter(reference, tmp_path)
    torch.testing.assert_close(output_of(loaded, inputs), expected, **REF_TOL)
    with loaded.disabled():
        assert (expected[:, -inputs["input_ids"].shape[1]:] - output_of(loaded, inputs)).abs().max() > 1e-3


def _copy_from_peft(model: st.AdaptedModel, theirs: Any) -> None:
    state = {k.split("prompt_encoder.default.", 1)[1]: v for k, v in theirs.state_dict().items()
             if "prompt_encoder.default." in k}
    params = adapter_params(model)
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(state["embedding.weight" if key == "prompt_embeddings" else key])


def test_same_weights_same_logits_loss_and_positions(case: Case) -> None:
    """Labels (prompt tuning prefixes them with -100) and explicit position ids are handled as PEFT does."""
    base = tiny_llama()
    theirs = peft_model(copy.deepcopy(base), case)
    model = st.adapt(base, case.ours)
    _copy_from_peft(model, theirs)
    inputs = model_inputs("llama", batch=3, seq=7)
    extra = {"labels": inputs["input_ids"], "position_ids": torch.arange(7).expand(3, 7)}
    with torch.no_grad():
        want, got = theirs(**inputs, **extra), model(**inputs, **extra)
    torch.testing.assert_close(got.logits, want.logits, **REF_TOL)
    torch.testing.assert_close(got.loss, want.loss, **REF_TOL)


def test_saved_config_matches_peft(case: Case, tmp_path: Path) -> None:
    ours(case).save_adapter(tmp_path / "ours")
    peft_model(tiny_llama(), case).save_pretrained(tmp_path / "theirs")
    mine = read_json(tmp_path / "ours" / "adapter_config.json")
    theirs = read_json(tmp_path / "theirs" / "adapter_config.json")
    keys = ("peft_type", "task_type", "num_virtual_tokens", "token_dim", "num_attention_heads", "num_layers",
            "num_transformer_submodules", "encoder_hidden_size", "prefix_projection", "prompt_tuning_init")
    assert {k: mine.get(k) for k in keys} == {k: theirs.get(k) for k in keys}


def test_greedy_generation_matches_peft(case: Case) -> None:
    base = tiny_llama()
    base_tokens = generate(base, model_inputs("llama", batch=2, seq=6))
    theirs = peft_model(copy.deepcopy(base), case)
    model = st.adapt(base, case.ours)
    _copy_from_peft(model, theirs)
    inputs = model_inputs("llama", batch=2, seq=6)
    tokens = generate(model, inputs)
    assert torch.equal(tokens, greedy(theirs, inputs))
    assert not torch.equal(tokens, base_tokens)  # the adapter changed what is generated


def test_incremental_decoding_with_a_cache(case: Case) -> None:
    """Forward with use_cache, then one token with that cache: the virtual tokens are not added twice."""
    model = ours(case)
    inputs = model_inputs("llama", batch=2, seq=6)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        first = model(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        step = model(input_ids=ids[:, 5:], attention_mask=mask, cache=first.cache, use_cache=True).logits
    torch.testing.assert_close(step[:, -1], output_of(model, inputs)[:, -1], **REF_TOL)


# ----- conformance -------------------------------------------------------------------------------------------
def test_save_load_round_trip_exact(case: Case, tmp_path: Path) -> None:
    model = ours(case)
    inputs = model_inputs("llama")
    model.save_adapter(tmp_path)
    loaded = st.load_adapter(tiny_llama(), tmp_path)
    assert torch.equal(output_of(loaded, inputs), output_of(model, inputs))
    saved, again = model.adapter_state_dict("default"), loaded.adapter_state_dict("default")
    assert saved.keys() == again.keys() == {"prompt_embeddings"}
    assert all(torch.equal(saved[k], again[k]) for k in saved)


def test_disabled_is_the_base(case: Case) -> None:
    reference = tiny_llama()
    model = ours(case)
    inputs = model_inputs("llama")
    with model.disabled():
        assert torch.equal(output_of(model, inputs), output_of(reference, inputs))
        assert torch.equal(generate(model, inputs), generate(reference, inputs))
    assert not torch.equal(output_of(model, inputs)[:, -inputs["input_ids"].shape[1]:], output_of(reference, inputs))


def test_training_changes_only_the_adapter_and_lowers_the_loss(case: Case) -> None:
    model = ours(case)
    model.train()
    base_before = snapshot(model.model)
    adapter_before = {k: v.detach().clone() for k, v in adapter_params(model).items()}
    batch = model_inputs("llama", batch=4, seq=9, seed=5)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-2)
    losses = []
    for _ in range(8):
        loss = model(**batch, labels=batch["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses
    assert all(torch.equal(v, base_before[k]) for k, v in model.model.state_dict().items())
    after = adapter_params(model)
    assert all(not torch.equal(after[k], v) for k, v in adapter_before.items())


def test_trainable_count_is_the_formula(case: Case) -> None:
    model = ours(case)
    assert sum(p.numel() for p in model.trainable_parameters()) == case.trainable
    assert all(not p.requires_grad for p in model.model.parameters())


def test_parameter_report_counts_the_adapter(case: Case) -> None:
    assert ours(case).parameter_report().trainable == case.trainable


def test_merge_and_mixed_batches_are_refused(case: Case) -> None:
    model = ours(case)
    with pytest.raises(st.MergeError, match="cannot be merged"):
        model.merge()
    with pytest.raises(st.AdapterStateError, match="mixed-adapter"):
        model(**model_inputs("llama"), adapter_names=["default", None, None, None])


# ----- method specifics --------------------------------------------------------------------------------------
def _word_tokenizer(directory: Path) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "classify", "the", "review", "as", "good", "or", "bad"]
    tok = Tokenizer(models.WordLevel({w: i + 3 for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    tokenizer.save_pretrained(directory)
    return PreTrainedTokenizerFast.from_pretrained(directory)


@pytest.mark.parametrize("n_virtual", [3, 11])  # truncated, repeated
def test_text_init_matches_peft(n_virtual: int, tmp_path: Path) -> None:
    text = "classify the review as good or bad"
    tokenizer = _word_tokenizer(tmp_path)
    base = tiny_llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=n_virtual, prompt_tuning_init="TEXT",
        prompt_tuning_init_text=text, tokenizer_name_or_path=str(tmp_path)))
    cfg = st.PromptTuningConfig.from_text(text, tokenizer, num_virtual_tokens=n_virtual)
    model = st.adapt(base, cfg)
    got = adapter_params(model)["prompt_embeddings"]
    want = theirs.prompt_encoder["default"].embedding.weight
    assert torch.equal(got, want)
    model.save_adapter(tmp_path / "adapter")  # a TEXT config that PEFT reads back
    reloaded = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter")
    assert reloaded.peft_config["default"].prompt_tuning_init == "TEXT"
    assert torch.equal(reloaded.prompt_encoder["default"].embedding.weight, want)


def test_bert_is_refused_clearly() -> None:
    base = tiny_bert()
    for cfg in (st.PromptTuningConfig(), st.PrefixTuningConfig()):
        with pytest.raises(st.ConfigError, match=r"BertForSequenceClassification.*modules_to_save"):
            st.adapt(base, cfg)
    assert all(p.requires_grad for p in base.parameters())  # left as it was


@pytest.mark.parametrize(("build", "match"), [
    (lambda: st.PromptTuningConfig(num_virtual_tokens=0), "num_virtual_tokens must be a positive integer, got 0"),
    (lambda: st.PromptTuningConfig(init=cast(Any, "vocab")), "init must be one of random, text; got 'vocab'"),
    (lambda: st.PromptTuningConfig(init="text", init_text="hi", tokenizer_path="t"), "needs init_token_ids"),
    (lambda: st.PromptTuningConfig(init="text", init_token_ids=(1, 2)), "needs init_text"),
    (lambda: st.PrefixTuningConfig(encoder_hidden_size=-4), "encoder_hidden_size .* got -4"),
    (lambda: st.PrefixTuningConfig(init=cast(Any, "ones")), "got 'ones'"),
])
def test_bad_config_values_are_quoted(build: Any, match: str) -> None:
    with pytest.raises(st.ConfigError, match=match):
        build()


def test_text_init_token_outside_vocabulary() -> None:
    cfg = st.PromptTuningConfig(init="text", init_text="x", tokenizer_path="t", init_token_ids=(5, 999))
    with pytest.raises(st.ConfigError, match=r"\[999\] are outside the vocabulary"):
        st.adapt(tiny_llama(), cfg)


@pytest.mark.parametrize("cls", [st.PromptTuningConfig, st.PrefixTuningConfig])
@pytest.mark.parametrize("field", [{"num_transformer_submodules": 2}, {"modules_to_save": ["score"]}])
def test_unsupported_peft_fields_are_refused(cls: Any, field: dict[str, Any]) -> None:
    with pytest.raises(st.ConfigError, match=next(iter(field))):
        cls.from_peft_dict({"num_virtual_tokens": 4, **field})


def test_projected_prefix_cannot_take_a_flat_state() -> None:
    model = ours(CASES[2])
    adapter = model.input_adapters["default"]
    assert isinstance(adapter, PrefixEncoder)
    with pytest.raises(st.AdapterStateError, match="cannot be inverted"):
        model.load_adapter_state("default", model.adapter_state_dict("default"))


def test_positional_arguments_are_bound_by_name(case: Case) -> None:
    model = ours(case)
    inputs = model_inputs("llama")
    with torch.no_grad():
        positional = model(inputs["input_ids"], inputs["attention_mask"]).logits
    assert torch.equal(positional, output_of(model, inputs))


def test_prefix_refuses_gradient_checkpointing() -> None:
    """transformers drops the cache inside checkpointed layers, which would silently remove the prefix."""
    base = tiny_llama()
    cast(Any, base).activation_checkpointing_enable()
    model = ours(CASES[1], base)
    model.train()
    with pytest.raises(st.AdapterStateError, match="gradient checkpointing"):
        model(**model_inputs("llama"))


def test_prefix_generate_needs_input_ids() -> None:
    model = ours(CASES[1])
    embeds = input_embeddings(model.model)(model_inputs("llama")["input_ids"])
    with pytest.raises(st.ConfigError, match="needs input_ids"):
        model.generate(inputs_embeds=embeds, max_new_tokens=2)


def test_bfloat16_model_gets_bfloat16_adapter(case: Case) -> None:
    model = ours(case, tiny_llama().to(torch.bfloat16))
    assert {p.dtype for p in model.trainable_parameters()} == {torch.bfloat16}
    inputs = model_inputs("llama", batch=2, seq=5)
    assert torch.isfinite(output_of(model, inputs)).all()
    assert generate(model, inputs, steps=3).shape == (2, 8)


def test_switching_between_two_adapters(case: Case) -> None:
    model = ours(case)  # "default", random values
    model.add_adapter("second", case.ours)
    randomize_adapters(model, seed=11, std=0.5)
    inputs = model_inputs("llama")
    alone = st.adapt(tiny_llama(), case.ours, name="second")
    alone.input_adapters["second"].load_state_dict(model.input_adapters["second"].state_dict())
    model.set_active("second")
    second = output_of(model, inputs)
    assert torch.equal(output_of(alone, inputs), second)
    model.set_active("default")
    assert not torch.equal(output_of(model, inputs), second)
    model.set_active(["default", "second"])
    with pytest.raises(st.AdapterStateError, match="only one prompt/prefix adapter"):
        output_of(model, inputs)


def test_combined_with_lora_round_trip(case: Case, tmp_path: Path) -> None:
    model = st.adapt(tiny_llama(), [st.LoraConfig(r=4, targets=("q_proj", "v_proj")), case.ours])
    randomize_adapters(model, std=0.5)
    inputs = model_inputs("llama")
    expected = output_of(model, inputs)
    model.save_adapter(tmp_path)
    loaded = st.load_adapter(tiny_llama(), tmp_path)
    second = model.adapter_names[1]
    loaded = st.load_adapter(loaded, tmp_path / second, name=second)
    loaded.set_active(model.adapter_names)
    assert torch.equal(output_of(loaded, inputs), expected)
