"""The bootstrap on known distributions: coverage near the nominal rate, width shrinking with n, seeding,
and the paired comparison detecting a real difference but not a null one."""

from __future__ import annotations

import numpy as np
import pytest

from slimtune.errors import ConfigError
from slimtune.eval.bootstrap import bootstrap_ci, paired_bootstrap, two_sample_bootstrap


def test_ci_of_a_normal_mean_covers_the_truth_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    trials, covered = 200, 0
    for seed in range(trials):
        sample = rng.normal(3.0, 2.0, size=80)
        ci = bootstrap_ci(sample, n_resamples=400, confidence=0.9, seed=seed)
        covered += ci.low <= 3.0 <= ci.high
    # percentile bootstrap undercovers slightly at n = 80; binomial sd of the rate is ~0.02
    assert 0.82 <= covered / trials <= 0.96


def test_width_shrinks_like_one_over_sqrt_n() -> None:
    rng = np.random.default_rng(1)
    small = bootstrap_ci(rng.normal(size=100), n_resamples=1000, seed=0)
    large = bootstrap_ci(rng.normal(size=1600), n_resamples=1000, seed=0)
    ratio = small.width / large.width  # sqrt(1600 / 100) = 4
    assert 3.0 < ratio < 5.3
    assert small.width == pytest.approx(2 * 1.96 / 10, rel=0.2)


def test_seeded_and_deterministic() -> None:
    values = np.random.default_rng(2).exponential(size=50)
    a = bootstrap_ci(values, seed=5)
    assert a == bootstrap_ci(values, seed=5)
    assert a != bootstrap_ci(values, seed=6)
    assert a.estimate == pytest.approx(values.mean())


def test_weighted_mean_is_the_token_weighted_loss() -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 50, size=60).astype(float)
    sums = counts * rng.uniform(1.0, 3.0, size=60)
    ci = bootstrap_ci(sums, weights=counts, seed=0)
    assert ci.estimate == pytest.approx(sums.sum() / counts.sum())
    assert ci.low < ci.estimate < ci.high


def test_chunked_draws_equal_one_shot(monkeypatch: pytest.MonkeyPatch) -> None:
    import slimtune.eval.bootstrap as bs

    values = np.random.default_rng(4).normal(size=100)
    whole = bootstrap_ci(values, n_resamples=300, seed=1)
    monkeypatch.setattr(bs, "_CHUNK_CELLS", 1000)  # 10 resamples per chunk, the same generator stream
    assert bootstrap_ci(values, n_resamples=300, seed=1) == whole


def test_paired_bootstrap_detects_a_shift_and_not_noise() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=300)
    shifted = paired_bootstrap(a, a + 0.3 + rng.normal(scale=0.2, size=300), seed=0)
    assert shifted.difference.low > 0.2 and shifted.p_value < 0.01
    null = paired_bootstrap(a, a + rng.normal(scale=0.2, size=300), seed=0)
    assert null.difference.low < 0 < null.difference.high and null.p_value > 0.05
    with pytest.raises(ConfigError):
        paired_bootstrap(a, a[:10])


def test_pairing_is_tighter_than_treating_runs_as_independent() -> None:
    rng = np.random.default_rng(6)
    shared = rng.normal(scale=3.0, size=200)  # example difficulty, common to both runs
    a, b = shared, shared + 0.1 + rng.normal(scale=0.1, size=200)
    paired = paired_bootstrap(a, b, seed=0).difference
    independent = two_sample_bootstrap(b, a, seed=0)
    assert paired.width < independent.width / 5
    assert independent.estimate == pytest.approx(paired.estimate)


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ConfigError):
        bootstrap_ci([], seed=0)
    with pytest.raises(ConfigError):
        bootstrap_ci([1.0, 2.0], n_resamples=3)
    with pytest.raises(ConfigError):
        bootstrap_ci([1.0, 2.0], confidence=1.5)
