"""Adapter weight scan: planted non-finite values, norm outliers and spectral spikes are found."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from slimtune.errors import CorruptFileError, UnsafeFormatError
from slimtune.governance import scan_adapter, scan_state_dict
from slimtune.governance.adapter_scan import role_of


def _adapter(seed: int = 0, layers: int = 8, r: int = 8, d: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(layers):
        for mod in ("q_proj", "v_proj"):
            key = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            state[f"{key}.lora_A.weight"] = torch.randn(r, d, generator=g) / d**0.5
            state[f"{key}.lora_B.weight"] = torch.randn(d, r, generator=g) * 0.01
    return state


def test_clean_adapter_is_clean() -> None:
    report = scan_state_dict(_adapter())
    assert report.clean and report.tensors == 8 * 2 * 3  # A, B and the B@A product per module


def test_planted_problems_are_found() -> None:
    state = _adapter(1)
    bad_nan = "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"
    state[bad_nan][0, 0] = float("nan")
    big = "base_model.model.model.layers.5.self_attn.v_proj.lora_B.weight"
    state[big] = state[big] * 50
    spike = "base_model.model.model.layers.6.self_attn.q_proj.lora_A.weight"
    u, v = torch.randn(8, 1), torch.randn(1, 64)
    state[spike] = state[spike] * 0.05 + u @ v / (u.norm() * v.norm()) * state[spike].norm()
    report = scan_state_dict(state)
    assert report.non_finite == [bad_nan]
    assert report.norm_outliers[0].name in (big, big.replace("lora_B", "lora_BA"))
    assert {f.name for f in report.spectral_outliers} & {spike, spike.replace("lora_A", "lora_BA")}
    assert not report.clean


def test_role_groups_layers() -> None:
    assert role_of("base_model.model.layers.12.mlp.lora_A.weight") == "base_model.model.layers.*.mlp.lora_A.weight"


def test_file_scan_and_refusals(tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file(_adapter(2), str(folder / "adapter_model.safetensors"))
    assert scan_adapter(folder).clean
    (tmp_path / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(UnsafeFormatError, match="refused"):
        scan_adapter(tmp_path / "adapter_model.bin")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(CorruptFileError, match=r"broken\.safetensors"):
        scan_adapter(tmp_path / "broken.safetensors")
