"""Every bad input gets its typed error, and the model is exactly as it was afterwards."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import slimtune as st
from tests.conftest import model_inputs, output_of, randomize_adapters, snapshot, tiny_gpt2, tiny_llama


def _structure(model: torch.nn.Module) -> list[tuple[str, str, bool]]:
    return [(n, type(m).__name__, all(p.requires_grad for p in m.parameters(recurse=False)))
            for n, m in model.named_modules()]


def _assert_unchanged(model: torch.nn.Module, structure: list, state: dict, out: torch.Tensor) -> None:
    assert _structure(model) == structure
    after = snapshot(model)
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    torch.testing.assert_close(output_of(model, model_inputs("llama")), out, atol=0, rtol=0)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = st.adapt(tiny_llama(), st.LoraConfig(r=4, targets=("q_proj", "v_proj")))
    randomize_adapters(model)
    model.save_adapter(tmp_path / "ad")
    return tmp_path / "ad"


def _fresh() -> tuple[torch.nn.Module, list, dict, torch.Tensor]:
    model = tiny_llama()
    return model, _structure(model), snapshot(model), output_of(model, model_inputs("llama"))


def test_target_matching_nothing_lists_what_exists() -> None:
    model, structure, state, out = _fresh()
    with pytest.raises(st.TargetError, match=r"'qproj'.*matched no module.*q_proj"):
        st.adapt(model, st.LoraConfig(targets=("qproj",)))
    _assert_unchanged(model, structure, state, out)


def test_target_of_unsupported_module_type() -> None:
    model, structure, state, out = _fresh()
    with pytest.raises(st.TargetError, match="LlamaRMSNorm"):
        st.adapt(model, st.LoraConfig(targets=("input_layernorm",)))
    _assert_unchanged(model, structure, state, out)


@pytest.mark.parametrize("field,value,pattern", [
    ("r", 0, "r must be a positive integer"),
    ("alpha", -1.0, "alpha must be a positive"),
    ("dropout", 1.5, r"dropout must be in \[0, 1\)"),
    ("init", "xavier", "init must be one of"),
    ("bias", "some", "bias must be one of"),
    ("targets", "(unclosed", "not a valid regular expression"),
    ("targets", (), "non-empty list"),
])
def test_config_validation_names_field_and_value(field: str, value: object, pattern: str) -> None:
    with pytest.raises(st.ConfigError, match=pattern):
        st.LoraConfig(**{field: value})


def test_bias_lora_only_without_biases() -> None:
    model, structure, state, out = _fresh()
    with pytest.raises(st.ConfigError, match="none of the targeted modules has a bias"):
        st.adapt(model, st.LoraConfig(bias="lora_only"))
    _assert_unchanged(model, structure, state, out)


def _rewrite(path: Path, change) -> None:
    tensors = load_file(path / "adapter_model.safetensors")
    save_file(change(dict(tensors)), path / "adapter_model.safetensors")


def test_missing_key(saved: Path) -> None:
    _rewrite(saved, lambda t: {k: v for i, (k, v) in enumerate(sorted(t.items())) if i != 0})
    model, structure, state, out = _fresh()
    with pytest.raises(st.KeyMismatchError, match=r"missing keys \(1\): model\.layers\.0\.self_attn\.q_proj"):
        st.load_adapter(model, saved)
    _assert_unchanged(model, structure, state, out)


def test_unexpected_key(saved: Path) -> None:
    _rewrite(saved, lambda t: {**t, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.ones(4, 64)})
    model, structure, state, out = _fresh()
    with pytest.raises(st.KeyMismatchError, match=r"unexpected keys \(1\): model\.layers\.0\.mlp\.up_proj"):
        st.load_adapter(model, saved)
    _assert_unchanged(model, structure, state, out)


def test_shape_mismatch(saved: Path) -> None:
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    _rewrite(saved, lambda t: {**t, key: torch.ones(32, 5)})
    model, structure, state, out = _fresh()
    with pytest.raises(st.KeyMismatchError, match=r"shape mismatches.*v_proj\.lora_B\.weight: file \(32, 5\)"):
        st.load_adapter(model, saved)
    _assert_unchanged(model, structure, state, out)


def test_fingerprint_mismatch_and_override(saved: Path) -> None:
    model = tiny_llama(seed=7)  # same architecture, other weights
    structure, state, out = _structure(model), snapshot(model), output_of(model, model_inputs("llama"))
    with pytest.raises(st.FingerprintMismatchError, match="check_fingerprint=False"):
        st.load_adapter(model, saved)
    _assert_unchanged(model, structure, state, out)
    loaded = st.load_adapter(model, saved, check_fingerprint=False)
    assert (output_of(loaded, model_inputs("llama")) - out).abs().max() > 1e-4


def test_fingerprint_is_dtype_independent_and_weight_sensitive() -> None:
    a = st.AdaptedModel(tiny_llama()).base_fingerprint
    assert st.AdaptedModel(tiny_llama().to(torch.bfloat16)).base_fingerprint == a
    assert st.AdaptedModel(tiny_llama(seed=1)).base_fingerprint != a


@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_pickle_weights_are_refused_never_unpickled(saved: Path, suffix: str, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    (saved / "adapter_model.safetensors").unlink()
    (saved / f"adapter_model{suffix}").write_bytes(pickle.dumps(Trap()))
    model, structure, state, out = _fresh()
    with pytest.raises(st.UnsafeFormatError, match="never unpickles"):
        st.load_adapter(model, saved)
    assert not marker.exists()
    with pytest.raises(st.UnsafeFormatError):
        st.load_adapter(model, saved / f"adapter_model{suffix}")
    _assert_unchanged(model, structure, state, out)


def test_pickle_under_a_safetensors_name(saved: Path) -> None:
    (saved / "adapter_model.safetensors").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    model, structure, state, out = _fresh()
    with pytest.raises(st.UnsafeFormatError):
        st.load_adapter(model, saved)
    _assert_unchanged(model, structure, state, out)


@pytest.mark.parametrize("cut", [3, 100, -50])
def test_truncated_or_corrupt_safetensors(saved: Path, cut: int) -> None:
    path = saved / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    model, structure, state, out = _fresh()
    with pytest.raises(st.CorruptFileError, match="re-save or re-copy"):
        st.load_adapter(model, saved)
    _assert_unchanged(model, structure, state, out)


def test_unknown_peft_type_and_bad_json(saved: Path) -> None:
    path = saved / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "peft_type": "MYSTERY"}))
    model, structure, state, out = _fresh()
    with pytest.raises(st.UnknownMethodError, match=r"'MYSTERY'.*known types: .*LORA"):
        st.load_adapter(model, saved)
    path.write_text("{not json")
    with pytest.raises(st.CorruptFileError, match="not valid JSON"):
        st.load_adapter(model, saved)
    path.write_text(json.dumps({**config, "lora_bias": True}))
    with pytest.raises(st.ConfigError, match="lora_bias"):
        st.load_adapter(model, saved)
    path.write_text(json.dumps({**config, "use_dora": True}))  # DoRA config without DoRA tensors
    with pytest.raises(st.KeyMismatchError, match="lora_magnitude_vector"):
        st.load_adapter(model, saved)
    path.write_text(json.dumps({**config, "init_lora_weights": "pissa"}))
    with pytest.raises(st.ConfigError, match="path_initial_model_for_weight_conversion"):
        st.load_adapter(model, saved)
    _assert_unchanged(model, structure, state, out)


def test_not_an_adapter_folder(tmp_path: Path) -> None:
    with pytest.raises(st.LoadError, match="does not exist"):
        st.load_adapter(tiny_llama(), tmp_path / "nope")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "adapter_config.json").write_text("{}")
    with pytest.raises(st.LoadError, match=r"sub-folders \['b'\]"):
        st.load_adapter(tiny_llama(), tmp_path)


def test_adapter_for_other_architecture(saved: Path) -> None:
    model = tiny_gpt2()
    before = _structure(model)
    with pytest.raises(st.FingerprintMismatchError):
        st.load_adapter(model, saved)
    with pytest.raises(st.TargetError, match="matched no module"):
        st.load_adapter(model, saved, check_fingerprint=False)
    assert _structure(model) == before


def test_non_finite_merge_is_refused_and_changes_nothing() -> None:
    model = st.adapt(tiny_llama(), st.LoraConfig(r=2))
    randomize_adapters(model)
    with torch.no_grad():
        model.model.model.layers[1].mlp.down_proj.lora_B["default"].weight[0, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(st.MergeError, match="NaN/Inf"):
        model.merge()
    assert model.merged_adapters == []
    after = snapshot(model)
    assert all(torch.equal(after[k], v, ) or torch.isnan(v).any() for k, v in before.items())


def test_tied_embedding_merge_is_refused() -> None:
    model = st.adapt(tiny_llama(tie=True), st.LoraConfig(r=2, targets=("embed_tokens",)))
    randomize_adapters(model)
    with pytest.raises(st.MergeError, match="tied"):
        model.merge()


def test_state_errors() -> None:
    model = st.adapt(tiny_llama(), st.LoraConfig(r=2))
    with pytest.raises(st.AdapterNameError, match="exists already"):
        model.add_adapter("default", st.LoraConfig(r=2))
    with pytest.raises(st.AdapterNameError, match="unknown adapter"):
        model.set_active("nope")
    with pytest.raises(st.AdapterNameError, match="unknown adapter"):
        model(**model_inputs("llama"), adapter_names=["nope"] * 4)
    with pytest.raises(st.AdapterStateError, match="one adapter name"):
        model(**model_inputs("llama"), adapter_names=["default"])
    model.merge()
    with pytest.raises(st.AdapterStateError, match="unmerge"):
        model(**model_inputs("llama"), adapter_names=["default"] * 4)
    with pytest.raises(st.AdapterStateError, match="unmerge"), model.disabled():
        pass
    plain = model.merge_and_unload()
    with pytest.raises(st.AdapterStateError, match="consumed"):
        model.set_active("default")
    assert isinstance(plain, type(tiny_llama()))


def test_adapt_failure_restores_requires_grad() -> None:
    model = tiny_llama()
    model.model.norm.weight.requires_grad_(True)
    model.lm_head.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(st.TargetError):
        st.adapt(model, st.LoraConfig(targets=("nothing_here",)))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert copy.deepcopy(flags) == flags
