"""Diagnostics: ESS, two-sample AUC, MMD permutation test, energy distance, the filter report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from data_prep.filter.diagnostics import (
    acceptance_rate,
    effective_sample_size,
    energy_distance,
    filter_diagnostics,
    mmd_test,
    split_target,
    two_sample_auc,
)
from data_prep.filter.sample import rejection_sample


def test_effective_sample_size():
    assert effective_sample_size(np.zeros(100)) == pytest.approx(100)
    assert effective_sample_size(np.r_[0.0, np.full(99, -50.0)]) == pytest.approx(1.0, abs=1e-6)
    r = np.random.default_rng(0).exponential(size=1_000)
    assert effective_sample_size(np.log(r)) == pytest.approx(r.sum() ** 2 / (r**2).sum())
    # Shift invariance in log space, and no overflow where exp(lr) would be inf.
    assert effective_sample_size(np.log(r) + 800) == pytest.approx(effective_sample_size(np.log(r)))
    assert effective_sample_size(np.r_[np.log(r), -np.inf]) == pytest.approx(effective_sample_size(np.log(r)))


def test_acceptance_rate():
    assert acceptance_rate([True, False, False, True]) == 0.5
    with pytest.raises(ValueError):
        acceptance_rate([])


def test_energy_distance_matches_scipy_in_1d():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, 700), rng.normal(0.5, 2, 900)
    assert energy_distance(x, y) == pytest.approx(stats.energy_distance(x, y), rel=1e-9)


def test_energy_distance_in_2d_orders_distances():
    rng = np.random.default_rng(2)
    p = rng.normal(0, 1, (2_000, 2))
    same = energy_distance(p, rng.normal(0, 1, (2_000, 2)))
    near = energy_distance(p, rng.normal(0.3, 1, (2_000, 2)))
    far = energy_distance(p, rng.normal(1.0, 1, (2_000, 2)))
    assert same < near < far
    assert energy_distance(p, p) == 0.0


def test_two_sample_auc_chance_and_separable():
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, (1_000, 4))
    assert two_sample_auc(a, rng.normal(0, 1, (3_000, 4)), seed=0) == pytest.approx(0.5, abs=0.04)
    assert two_sample_auc(a, rng.normal(3, 1, (3_000, 4)), seed=0) > 0.99
    assert two_sample_auc(a, a[:1], seed=0) is None


def test_two_sample_auc_nonlinear_model_sees_a_variance_difference():
    """A linear classifier cannot see a pure variance change; gradient boosting can."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, (1_000, 2)), rng.normal(0, 2, (1_000, 2))
    assert two_sample_auc(a, b, seed=0) < 0.6
    assert two_sample_auc(a, b, seed=0, model="gbm") > 0.75


def test_mmd_null_and_alternative():
    rng = np.random.default_rng(5)
    p = rng.normal(0, 1, (500, 3))
    null = mmd_test(p, rng.normal(0, 1, (500, 3)), seed=0)
    alt = mmd_test(p, rng.normal(0.4, 1, (500, 3)), seed=0)
    assert null.p_value > 0.05
    assert alt.p_value < 0.01 and alt.mmd2 > null.mmd2
    assert null.bandwidth > 0


def test_mmd_is_unbiased_under_the_null():
    """The unbiased statistic averages to 0 when the samples match (the biased one is positive)."""
    rng = np.random.default_rng(6)
    values = [
        mmd_test(rng.normal(size=(100, 2)), rng.normal(size=(100, 2)), seed=s, permutations=1).mmd2
        for s in range(40)
    ]
    assert min(values) < 0 < max(values)
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_mmd_is_seeded():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(300, 2)), rng.normal(0.1, 1, (300, 2))
    assert mmd_test(x, y, seed=3) == mmd_test(x, y, seed=3)


def test_split_target_disjoint_and_seeded():
    fit, held = split_target(100, 0.2, seed=0)
    assert len(held) == 20 and len(fit) == 80
    assert not set(fit) & set(held) and set(fit) | set(held) == set(range(100))
    np.testing.assert_array_equal(held, split_target(100, 0.2, seed=0)[1])
    assert not np.array_equal(held, split_target(100, 0.2, seed=1)[1])
    with pytest.raises(ValueError, match="keep 2 on each side"):
        split_target(3, 0.5)


def test_filter_diagnostics_on_an_exact_filter():
    """p = N(1,1), q = N(0,2^2), exact ratio, max policy: the accepted set looks like held-out p."""
    rng = np.random.default_rng(8)
    heldout = rng.normal(1, 1, 2_000)
    candidates = rng.normal(0, 2, 10_000)
    log_ratio = stats.norm(1, 1).logpdf(candidates) - stats.norm(0, 2).logpdf(candidates)
    accepted = rejection_sample(log_ratio, "max", seed=0)
    report = filter_diagnostics(heldout, candidates, accepted, log_ratio, seed=0, model="quadratic")
    json.dumps(report)  # goes into the stage's JSON report as is
    assert report["n_accepted"] == accepted.sum() and report["acceptance_rate"] == pytest.approx(
        accepted.mean()
    )
    assert report["auc_target_vs_candidates"] > 0.7
    assert report["auc_target_vs_accepted"] == pytest.approx(0.5, abs=0.04)
    assert report["closer_to_target"] is True
    assert report["mmd_p_target_vs_candidates"] < 0.01 < report["mmd_p_target_vs_accepted"]
    assert 0 < report["ess_fraction"] <= 1


def test_filter_diagnostics_with_nothing_accepted():
    rng = np.random.default_rng(9)
    candidates = rng.normal(size=(200, 2))
    report = filter_diagnostics(rng.normal(size=(50, 2)), candidates, np.zeros(200, bool), np.zeros(200))
    assert report["n_accepted"] == 0
    assert report["auc_target_vs_accepted"] is None and report["closer_to_target"] is None
    with pytest.raises(ValueError, match="accepted mask has shape"):
        filter_diagnostics(candidates, candidates, np.zeros(3, bool), np.zeros(200))
