"""The fast ops against plain-torch formulas, in float64 (exact up to rounding) on fresh random inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimtune import kernels
from slimtune.errors import ConfigError

D = torch.float64
TOL = {"atol": 1e-9, "rtol": 1e-9}


def _rand(*shape: int, grad: bool = True, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D).requires_grad_(grad)


def _grads(out: torch.Tensor, tensors: list[torch.Tensor], seed: int = 9) -> list[torch.Tensor]:
    probe = _rand(*out.shape, grad=False, seed=seed)
    return list(torch.autograd.grad((out * probe).sum(), tensors, retain_graph=True))


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_lora_linear_matches_formula(with_bias: bool, dropout: bool) -> None:
    x, w = _rand(2, 5, 12, seed=1), _rand(7, 12, grad=False, seed=2)
    a, b = _rand(3, 12, seed=3), _rand(7, 3, seed=4)
    bias = _rand(7, seed=5) if with_bias else None
    xd = x * (_rand(*x.shape, grad=False, seed=6) > 0) * 2.0 if dropout else x  # a fixed dropout mask
    fast = kernels.lora_linear(x, w, bias, a, b, 0.7, xd=xd)
    ref = F.linear(x, w, bias) + 0.7 * F.linear(F.linear(xd, a), b)
    torch.testing.assert_close(fast, ref, **TOL)
    inputs = [x, a, b] + ([bias] if bias is not None else [])
    for got, want in zip(_grads(fast, inputs), _grads(ref, inputs), strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_lora_linear_frozen_input_and_no_grad() -> None:
    x, w = _rand(6, 8, grad=False, seed=1), _rand(4, 8, grad=False, seed=2)
    a, b = _rand(2, 8, seed=3), _rand(4, 2, seed=4)
    out = kernels.lora_linear(x, w, None, a, b, 2.0)
    ga, gb = _grads(out, [a, b])
    ref = F.linear(x, w) + 2.0 * F.linear(F.linear(x, a), b)
    ra, rb = _grads(ref, [a, b])
    torch.testing.assert_close(ga, ra, **TOL)
    torch.testing.assert_close(gb, rb, **TOL)
    with torch.no_grad():
        torch.testing.assert_close(kernels.lora_linear(x, w, None, a, b, 2.0), ref.detach(), **TOL)


@pytest.mark.parametrize("rows", [2, 300])
def test_lora_linear_inference_both_sides_of_the_merge_rule(rows: int) -> None:
    x, w, bias = _rand(rows, 16, grad=False, seed=1), _rand(24, 16, grad=False, seed=2), _rand(24, grad=False, seed=5)
    a, b = _rand(4, 16, grad=False, seed=3), _rand(24, 4, grad=False, seed=4)
    w_before = w.clone()
    assert kernels.merge_pays(rows, 16, 24) == (rows > 10)  # 2 * 16 * 24 < rows * (16 + 48)
    with torch.no_grad():
        out = kernels.lora_linear(x, w, bias, a, b, 0.5)
    torch.testing.assert_close(out, F.linear(x, w, bias) + 0.5 * F.linear(F.linear(x, a), b), **TOL)
    assert torch.equal(w, w_before)  # the merged weight is the call's own


def test_dora_norm_matches_full_weight_norm() -> None:
    w, a, b = _rand(9, 13, grad=False, seed=1), _rand(4, 13, seed=2), _rand(9, 4, seed=3)
    want = torch.linalg.norm(w + 0.3 * (b @ a), dim=1)
    torch.testing.assert_close(kernels.dora_norm(w, a, b, 0.3), want, **TOL)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dora_linear_matches_formula(recompute: bool, with_bias: bool) -> None:
    x, w = _rand(3, 4, 10, seed=1), _rand(6, 10, grad=False, seed=2)
    a, b, m = _rand(2, 10, seed=3), _rand(6, 2, seed=4), _rand(6, seed=5)
    bias = _rand(6, seed=6) if with_bias else None
    fast = kernels.dora_linear(x, w, bias, a, b, m, 0.5, recompute=recompute)
    norm = torch.linalg.norm(w + 0.5 * (b @ a), dim=1).detach()
    ref = (m / norm) * (F.linear(x, w) + 0.5 * F.linear(F.linear(x, a), b))
    ref = ref + bias if bias is not None else ref
    torch.testing.assert_close(fast, ref, **TOL)
    inputs = [x, a, b, m] + ([bias] if bias is not None else [])
    for got, want in zip(_grads(fast, inputs), _grads(ref, inputs), strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("train_head", [False, True])
@pytest.mark.parametrize("vocab_first", [False, True])  # the CPU's (V, c) logits and the GPU's (c, V)
def test_linear_cross_entropy_matches_torch(chunk: int | None, train_head: bool, vocab_first: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from slimtune.kernels import loss

    monkeypatch.setattr(loss, "_vocab_first", lambda hidden: vocab_first)
    h, w = _rand(10, 8, seed=1), _rand(33, 8, grad=train_head, seed=2)
    labels = torch.randint(0, 33, (10,), generator=torch.Generator().manual_seed(3))
    labels[[1, 6]] = -100
    fast = kernels.linear_cross_entropy(h, w, labels, chunk=chunk)
    ref = kernels.linear_cross_entropy_reference(h, w, labels)
    torch.testing.assert_close(fast.double(), ref.double(), atol=1e-6, rtol=1e-6)
    inputs = [h, w] if train_head else [h]
    for got, want in zip(torch.autograd.grad(fast * 1.7, inputs), torch.autograd.grad(ref * 1.7, inputs),
                         strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_linear_cross_entropy_all_ignored_is_nan() -> None:
    h, w = _rand(4, 8, seed=1), _rand(5, 8, grad=False, seed=2)
    assert torch.isnan(kernels.linear_cross_entropy(h, w, torch.full((4,), -100)))


@pytest.mark.parametrize("shape", [(5, 3, 12), (5, 12)])
def test_gathered_lora_matches_per_row_loop(shape: tuple[int, ...]) -> None:
    x, w, bias = _rand(*shape, grad=False, seed=1), _rand(7, 12, grad=False, seed=2), _rand(7, grad=False, seed=3)
    a = [_rand(r, 12, grad=False, seed=10 + r) for r in (2, 4, 3)]
    b = [_rand(7, r, grad=False, seed=20 + r) for r in (2, 4, 3)]
    names, scales = ["p", "q", "s"], [0.5, 2.0, 1.5]
    rows = ["q", None, "p", "q", "nope"]
    out = kernels.gathered_lora(x, w, bias, a, b, scales, names, rows)
    for i, row in enumerate(rows):
        want = F.linear(x[i], w, bias)
        if row in names:
            k = names.index(row)
            want = want + scales[k] * F.linear(F.linear(x[i], a[k]), b[k])
        torch.testing.assert_close(out[i], want, **TOL)


@pytest.mark.parametrize("rows", [["q", "q", None, "p", "p", "p"], ["q", "p", "q", None, "p", "p"]])
def test_gathered_lora_inference_grouped_and_scattered_rows(rows: list[str | None]) -> None:
    x, w, bias = _rand(6, 40, 12, grad=False, seed=1), _rand(7, 12, grad=False, seed=2), _rand(7, grad=False, seed=3)
    a = [_rand(r, 12, grad=False, seed=10 + r) for r in (2, 4)]
    b = [_rand(7, r, grad=False, seed=20 + r) for r in (2, 4)]
    names, scales = ["p", "q"], [0.5, 2.0]
    together = kernels.row_runs(rows)
    assert (together is not None) == (rows[1] == "q")  # the first list's adapters each hold one run of rows
    assert kernels.grouped_pays(6 * 40, 2, 12, 7)
    w_before = w.clone()
    with torch.no_grad():
        out = kernels.gathered_lora(x, w, bias, a, b, scales, names, rows)
    assert torch.equal(w, w_before)
    for i, row in enumerate(rows):
        want = F.linear(x[i], w, bias)
        if row is not None:
            k = names.index(row)
            want = want + scales[k] * F.linear(F.linear(x[i], a[k]), b[k])
        torch.testing.assert_close(out[i], want, **TOL)


def test_gathered_lora_stack_cache_never_serves_another_tensors_values() -> None:
    """The stacked-adapter cache is keyed by storage and version: a new tensor on the same memory with the same
    version (memory an earlier adapter freed; here numpy memory written behind torch's back) must miss."""
    import numpy as np

    x, w = _rand(3, 4, 12, grad=False, seed=1), _rand(7, 12, grad=False, seed=2)
    rng = np.random.default_rng(0)
    memory = [rng.standard_normal((2, 12)), rng.standard_normal((7, 2))]
    rows = ["p", None, "p"]
    for _ in range(2):
        a, b = torch.from_numpy(memory[0]), torch.from_numpy(memory[1])  # fresh tensors, version 0, same memory
        with torch.no_grad():
            out = kernels.gathered_lora(x, w, None, [a], [b], [1.5], ["p"], rows)
        torch.testing.assert_close(out[0], F.linear(x[0], w) + 1.5 * F.linear(F.linear(x[0], a), b), **TOL)
        memory[0][:] = rng.standard_normal((2, 12))  # other values in the same memory
        memory[1][:] = rng.standard_normal((7, 2))


def test_gathered_lora_gradients_flow_to_every_adapter() -> None:
    x, w = _rand(4, 2, 6, seed=1), _rand(5, 6, grad=False, seed=2)
    a, b = [_rand(2, 6, seed=3), _rand(2, 6, seed=4)], [_rand(5, 2, seed=5), _rand(5, 2, seed=6)]
    out = kernels.gathered_lora(x, w, None, a, b, [1.0, 0.5], ["u", "v"], ["u", "v", "v", None])
    ref = torch.cat([F.linear(x[i:i + 1], w) + s * F.linear(F.linear(x[i:i + 1], a[k]), b[k]) if k >= 0
                     else F.linear(x[i:i + 1], w) for i, (k, s) in enumerate([(0, 1.0), (1, 0.5), (1, 0.5), (-1, 0)])])
    for got, want in zip(_grads(out, [x, *a, *b]), _grads(ref, [x, *a, *b]), strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_mode_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.zeros(1)
    monkeypatch.setenv("SLIMTUNE_KERNELS", "reference")
    assert kernels.mode() == "reference" and not kernels.enabled(cpu)
    monkeypatch.setenv("SLIMTUNE_KERNELS", "fast")
    assert kernels.enabled(cpu)
    monkeypatch.setenv("SLIMTUNE_KERNELS", "auto")
    assert kernels.enabled(cpu, "dora") and kernels.enabled(cpu, "lora") and kernels.enabled(cpu, "loss")
    assert not kernels.enabled(cpu, "mixed")  # CPU training with per-row adapters: the reference
    with torch.no_grad():
        assert kernels.enabled(cpu, "mixed")  # CPU inference: every fused product
    with kernels.fast_paths(True):
        assert kernels.mode() == "fast"
        with kernels.fast_paths(False):
            assert kernels.mode() == "reference"
    assert kernels.mode() == "auto"
    monkeypatch.setenv("SLIMTUNE_KERNELS", "turbo")
    with pytest.raises(ConfigError, match="turbo"):
        kernels.mode()
    with pytest.raises(ConfigError, match="'yes'"):
        kernels.use_fast("yes")  # type: ignore[arg-type]
