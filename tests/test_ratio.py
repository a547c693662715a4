"""Ratio estimators on Gaussians, where the true log ratio is known in closed form."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from scipy import stats
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KNeighborsClassifier

from core.seeding import stream_rng
from data_prep.filter.diagnostics import energy_distance
from data_prep.filter.estimators import ESTIMATORS, Groups, RatioResult, estimate, get_estimator
from data_prep.filter.estimators.classifier import cross_fit_log_ratio
from data_prep.filter.estimators.crossfit import fold_ids
from data_prep.filter.estimators.gmm_ubm import map_adapt_means
from data_prep.filter.sample import rejection_sample

MU, COV = np.array([1.0, 0.5]), np.diag([0.5, 1.0])  # target p
Q_SCALE = 2.0  # proposal q = N(0, 2^2 I): wider than p in every direction, so r is bounded


@pytest.fixture(scope="module")
def gaussians_2d() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target 2,000 from p, candidates 20,000 from q, fresh 3,000 from p for distances)."""
    rng = np.random.default_rng(11)
    target = rng.multivariate_normal(MU, COV, 2_000)
    candidates = rng.normal(0.0, Q_SCALE, (20_000, 2))
    fresh = rng.multivariate_normal(MU, COV, 3_000)
    return target, candidates, fresh


def _distance_reduction(candidates, fresh, log_ratio) -> float:
    accepted = rejection_sample(log_ratio, "max", seed=0)
    assert accepted.sum() > 500  # enough accepted points for a meaningful distance
    return 1 - energy_distance(candidates[accepted], fresh) / energy_distance(candidates, fresh)


@pytest.mark.parametrize(
    "method, options",
    [("classifier", {"classifier": "quadratic"}), ("gmm", {})],
    ids=["classifier-quadratic", "gmm"],
)
def test_accepted_set_is_70_percent_closer_to_p(gaussians_2d, method, options):
    target, candidates, fresh = gaussians_2d
    result = estimate(target, candidates, method, seed=0, **options)
    assert isinstance(result, RatioResult) and result.log_ratio.shape == (len(candidates),)
    json.dumps(result.details)  # goes into the filter stage's JSON report as is
    exact = stats.multivariate_normal(MU, COV).logpdf(candidates) - stats.multivariate_normal(
        np.zeros(2), Q_SCALE**2 * np.eye(2)
    ).logpdf(candidates)
    assert np.corrcoef(exact, result.log_ratio)[0, 1] > 0.98
    assert _distance_reduction(candidates, fresh, result.log_ratio) >= 0.70


def test_linear_classifier_on_a_mean_shift():
    """Equal covariances: log r is linear, so plain logistic regression is the exact family."""
    rng = np.random.default_rng(12)
    target = rng.normal([0.7, -0.5], 1.0, (2_000, 2))
    candidates = rng.normal(0.0, 1.0, (20_000, 2))
    fresh = rng.normal([0.7, -0.5], 1.0, (3_000, 2))
    log_ratio = estimate(target, candidates, "classifier", seed=0).log_ratio
    assert _distance_reduction(candidates, fresh, log_ratio) >= 0.70


def test_prior_correction_with_imbalanced_sets():
    """p = N(1,1), q = N(0,1): log r = x - 1/2. With 40x more candidates than targets the raw
    logit is off by log 40 = 3.7; the fold's training counts must put it back."""
    rng = np.random.default_rng(13)
    target = rng.normal(1.0, 1.0, 500)
    candidates = rng.normal(0.0, 1.0, 20_000)
    result = estimate(target, candidates, "classifier", seed=0)
    slope, intercept = np.polyfit(candidates, result.log_ratio, 1)
    assert slope == pytest.approx(1.0, abs=0.15)
    assert intercept == pytest.approx(-0.5, abs=0.15)
    assert np.mean(np.exp(result.log_ratio)) == pytest.approx(1.0, abs=0.1)  # E_q[r] = 1
    n_train, m_train = 20_000 * 4 / 5, 500 * 4 / 5
    np.testing.assert_allclose(result.details["log_prior_correction"], np.log(n_train / m_train), atol=1e-9)


class SpyClassifier(ClassifierMixin, BaseEstimator):
    """Logistic regression that fails if asked to score a row it was trained on."""

    def fit(self, x, y):
        self.seen_ = {row.tobytes() for row in x}
        self.model_ = LogisticRegression().fit(x, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, x):
        leaked = sum(row.tobytes() in self.seen_ for row in x)
        assert leaked == 0, f"{leaked} scored rows were in this model's training set"
        return self.model_.predict_proba(x)


def test_cross_fitting_never_scores_a_point_with_its_own_model():
    rng = np.random.default_rng(14)
    target, candidates = rng.normal(0.5, 1, (103, 3)), rng.normal(0, 1, (1_009, 3))
    result = cross_fit_log_ratio(target, candidates, lambda cv: SpyClassifier(), folds=5, seed=0)
    assert np.isfinite(result.log_ratio).all() and np.isfinite(result.target_log_ratio).all()
    assert set(result.fold) == set(range(5))
    sizes = np.bincount(result.fold)
    assert sizes.max() - sizes.min() <= 1


def test_cross_fitted_memorizing_model_sees_no_difference_when_p_equals_q():
    """A nearest-neighbour classifier scored in-sample counts each point as its own neighbour and
    separates identical distributions; cross-fitted, its held-out AUC stays at chance."""
    rng = np.random.default_rng(15)
    target, candidates = rng.normal(0, 1, (1_000, 4)), rng.normal(0, 1, (4_000, 4))
    result = cross_fit_log_ratio(target, candidates, lambda cv: KNeighborsClassifier(5), seed=0)
    assert result.auc == pytest.approx(0.5, abs=0.05)
    x, y = np.r_[target, candidates], np.r_[np.ones(len(target)), np.zeros(len(candidates))]
    in_sample = KNeighborsClassifier(5).fit(x, y).predict_proba(x)[:, 1]
    assert roc_auc_score(y, in_sample) > 0.8


def test_calibrated_mlp_recovers_the_ratio():
    """The Platt-calibrated path (predict_proba, clipped logit); gbm shares it but is piecewise
    constant and needs far more data for a smooth 1-D ratio."""
    rng = np.random.default_rng(16)
    target, candidates = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 2_000)
    result = estimate(target, candidates, "classifier", seed=0, classifier="mlp")
    assert np.corrcoef(candidates - 0.5, result.log_ratio)[0, 1] > 0.8
    assert 0.65 < result.auc < 0.85  # two unit Gaussians one sd apart: AUC = Phi(1/sqrt 2) = 0.76
    assert np.median(np.abs(result.log_ratio - (candidates - 0.5))) < 0.5


def test_warns_when_the_sets_barely_overlap(caplog):
    rng = np.random.default_rng(17)
    target, candidates = rng.normal(6.0, 1.0, (300, 2)), rng.normal(0.0, 1.0, (3_000, 2))
    with caplog.at_level(logging.WARNING, logger="data_prep.filter.estimators"):
        result = estimate(target, candidates, "classifier", seed=0)
    assert result.auc > 0.95
    assert "barely overlap" in result.details["warning"]
    assert any("barely overlap" in r.getMessage() for r in caplog.records)


def test_no_warning_when_the_sets_overlap(caplog):
    rng = np.random.default_rng(18)
    target, candidates = rng.normal(0.5, 1.0, (300, 2)), rng.normal(0.0, 1.0, (3_000, 2))
    with caplog.at_level(logging.WARNING, logger="data_prep.filter.estimators"):
        result = estimate(target, candidates, "classifier", seed=0)
    assert result.auc < 0.8 and "warning" not in result.details
    assert not caplog.records


def test_same_seed_same_ratios_other_seed_other_folds(gaussians_2d):
    target, candidates, _ = gaussians_2d
    a = estimate(target[:500], candidates[:5_000], "classifier", seed=3)
    b = estimate(target[:500], candidates[:5_000], "classifier", seed=3)
    c = estimate(target[:500], candidates[:5_000], "classifier", seed=4)
    np.testing.assert_array_equal(a.log_ratio, b.log_ratio)
    np.testing.assert_array_equal(a.fold, b.fold)
    assert not np.array_equal(a.fold, c.fold)


def test_pca_keeps_the_separating_directions():
    """10-d: the target differs only along two high-variance directions; PCA to 2 keeps them."""
    rng = np.random.default_rng(19)
    scale = np.r_[3.0, 3.0, np.ones(8)]
    target = rng.normal(0, 1, (1_000, 10)) * scale + np.r_[3.0, -3.0, np.zeros(8)]
    candidates = rng.normal(0, 1, (5_000, 10)) * scale
    full = estimate(target, candidates, "classifier", seed=0)
    reduced = estimate(target, candidates, "classifier", seed=0, pca_dim=2)
    assert reduced.details["pca"]["dim"] == 2 and reduced.details["pca"]["explained_variance"] > 0.5
    assert full.details["pca"] is None
    assert reduced.auc == pytest.approx(full.auc, abs=0.02)
    assert np.corrcoef(full.log_ratio, reduced.log_ratio)[0, 1] > 0.95


def test_gmm_bic_finds_a_two_component_target():
    rng = np.random.default_rng(20)
    target = np.concatenate([rng.normal(-3, 0.5, (500, 2)), rng.normal(3, 0.5, (500, 2))])
    candidates = rng.normal(0, 3, (5_000, 2))
    result = estimate(target, candidates, "gmm", seed=0)
    assert [g["components"] for g in result.details["target_gmm"]] == [2] * 5  # every fold's own search
    assert [g["components"] for g in result.details["candidate_gmm"]] == [1] * 5
    assert set(result.fold) == set(range(5)) and result.auc > 0.5  # cross-fitted, like every estimator
    # Candidates near either target mode outrank those between the modes.
    near_mode = np.minimum(np.linalg.norm(candidates - 3, axis=1), np.linalg.norm(candidates + 3, axis=1)) < 1
    between = np.linalg.norm(candidates, axis=1) < 1
    assert np.median(result.log_ratio[near_mode]) > np.median(result.log_ratio[between]) + 3


def test_gmm_small_target_in_high_dimension_still_gets_a_density(caplog):
    """100 target points in 32-d: too few for any mixture but one diagonal Gaussian, which is fitted
    (with a warning) rather than refused."""
    rng = np.random.default_rng(23)
    target, candidates = rng.normal(0.5, 1, (100, 32)), rng.normal(0, 1, (3_000, 32))
    with caplog.at_level(logging.WARNING, logger="data_prep.filter.estimators"):
        result = estimate(target, candidates, "gmm", seed=0)
    assert all((g["components"], g["covariance"]) == (1, "diag") for g in result.details["target_gmm"])
    assert "density is rough" in caplog.text
    exact = 0.5 * candidates.sum(axis=1)  # log r up to a constant
    assert np.corrcoef(exact, result.log_ratio)[0, 1] > 0.8  # 0.96 measured


def _utterances(rng, means, n_utts, frames=40, sd=0.6):
    """Per-utterance frame matrices from a Gaussian mixture with the given component means."""
    out = []
    for _ in range(n_utts):
        comp = rng.integers(len(means), size=frames)
        out.append(means[comp] + sd * rng.standard_normal((frames, means.shape[1])))
    return out


def test_gmm_ubm_ranks_target_like_utterances_first():
    rng = np.random.default_rng(21)
    target_means = rng.normal(0, 2, (4, 3))
    other_means = rng.normal(0, 2, (4, 3))
    target = _utterances(rng, target_means, 40)
    candidates = _utterances(rng, target_means, 50) + _utterances(rng, other_means, 50)
    is_target_like = np.r_[np.ones(50), np.zeros(50)]
    result = estimate(target, candidates, "gmm_ubm", seed=0, ubm_components=8)
    assert result.log_ratio.shape == (100,)
    json.dumps(result.details)
    # Cross-fitted: each model saw 32 of the 40 target utterances (0.950-0.992 over seeds 0-2; the
    # target model fitted on all 40 scored above 0.95 before cross-fitting).
    assert roc_auc_score(is_target_like, result.log_ratio) > 0.93
    assert result.details["calibration"]["method"] == "spline"
    # The uncalibrated score: temperature x mean frame log-likelihood ratio.
    cold, hot = (
        estimate(
            target,
            candidates,
            "gmm_ubm",
            seed=0,
            ubm_components=8,
            ubm_calibration="temperature",
            temperature=t,
        )
        for t in (1.0, 3.0)
    )
    np.testing.assert_allclose(hot.log_ratio, 3.0 * cold.log_ratio, rtol=1e-10)


def test_map_adaptation_interpolates_between_ubm_and_data():
    rng = np.random.default_rng(22)
    ubm = GaussianMixture(1, covariance_type="diag", random_state=0).fit(rng.normal(0, 1, (2_000, 2)))
    frames = rng.normal(5, 1, (100, 2))
    np.testing.assert_allclose(map_adapt_means(ubm, frames, relevance=0).means_[0], frames.mean(axis=0))
    halfway = map_adapt_means(ubm, frames, relevance=100).means_[0]  # n_i = 100 = relevance: alpha 1/2
    np.testing.assert_allclose(halfway, 0.5 * frames.mean(axis=0) + 0.5 * ubm.means_[0])
    np.testing.assert_allclose(
        map_adapt_means(ubm, frames, relevance=1e12).means_[0], ubm.means_[0], atol=1e-6
    )
    np.testing.assert_array_equal(map_adapt_means(ubm, frames).covariances_, ubm.covariances_)


def test_fold_ids_are_balanced_and_seeded():
    a = fold_ids(103, 5, np.random.default_rng(0))
    assert np.bincount(a).tolist() == [21, 21, 21, 20, 20]
    np.testing.assert_array_equal(a, fold_ids(103, 5, np.random.default_rng(0)))


def test_without_groups_the_folds_are_the_seeded_random_ones():
    """groups=None keeps the seeded random folds: fold_ids on the `filter folds` stream."""
    rng = np.random.default_rng(24)
    target, candidates = rng.normal(0.5, 1, (60, 2)), rng.normal(0, 1, (200, 2))
    result = estimate(target, candidates, "classifier", seed=7)
    folds_rng = stream_rng(7, "filter", "folds")
    fold_ids(60, 5, folds_rng)  # the targets' folds are drawn first
    np.testing.assert_array_equal(result.fold, fold_ids(200, 5, folds_rng))


def test_grouped_folds_keep_each_group_whole_and_still_recover_the_ratio():
    """Copies of one utterance share a group: cross-fitting must never train on one copy and score
    another. p = N(1,1), q = N(0,1): log r = x - 1/2, whatever the grouping."""
    rng = np.random.default_rng(25)
    n_groups = 4_000
    group_of_base = rng.permutation(n_groups)
    sizes = rng.integers(1, 6, n_groups)  # 1-5 copies per "utterance"
    base = rng.normal(0.0, 1.0, n_groups)
    groups = np.repeat(group_of_base, sizes)
    candidates = np.repeat(base, sizes) + rng.normal(0.0, 0.01, sizes.sum())  # near-copies
    target = rng.normal(1.0, 1.0, 1_000)
    labels = Groups(np.arange(n_groups, n_groups + len(target)), groups)  # targets: their own labels
    result = estimate(target, candidates, "classifier", seed=0, groups=labels)
    for g in np.unique(groups)[:500]:
        assert len(set(result.fold[groups == g])) == 1
    sizes_per_fold = np.bincount(result.fold)
    assert len(sizes_per_fold) == 5 and sizes_per_fold.max() - sizes_per_fold.min() <= 5  # largest group
    slope, intercept = np.polyfit(candidates, result.log_ratio, 1)
    assert slope == pytest.approx(1.0, abs=0.15) and intercept == pytest.approx(-0.5, abs=0.15)
    again = estimate(target, candidates, "classifier", seed=0, groups=labels)
    other = estimate(target, candidates, "classifier", seed=1, groups=labels)
    np.testing.assert_array_equal(again.fold, result.fold)
    assert not np.array_equal(other.fold, result.fold)
    with pytest.raises(ValueError, match="at least 5 groups of target"):
        estimate(target, candidates, "classifier", groups=(np.arange(len(target)) % 3, groups))
    with pytest.raises(ValueError, match="labels for"):
        estimate(target, candidates, "classifier", groups=(labels.target, groups[:-1]))
    with pytest.raises(TypeError, match="Groups or a"):
        estimate(
            target, candidates, "classifier", groups=groups
        )  # candidate labels alone say nothing of targets


def test_group_folds_never_score_a_group_with_a_model_that_saw_it():
    """The spy fails on a scored row that was in its training set; rows of a group are identical,
    so a group split across folds would be caught."""
    rng = np.random.default_rng(26)
    base = rng.normal(0, 1, (300, 3))
    groups = np.repeat(np.arange(300), 3)
    candidates = base[groups]  # three identical copies of each point
    target = rng.normal(0.5, 1, (103, 3))
    labels = Groups(np.arange(300, 403), groups)
    result = cross_fit_log_ratio(
        target, candidates, lambda cv: SpyClassifier(), folds=5, seed=0, groups=labels
    )
    assert np.isfinite(result.log_ratio).all() and set(result.fold) == set(range(5))


def test_registry_builds_each_estimator_with_its_own_options():
    assert list(ESTIMATORS) == ["classifier", "gmm", "gmm_ubm"]
    e = get_estimator("gmm_ubm", ubm_components=8, pca_dim=2)
    assert e.frames and e.options.ubm_components == 8 and e.options.relevance == 16.0 and e.pca_dim == 2
    parsed = [cls.Options() for cls in ESTIMATORS.values()]
    parsed[0].classifier = "logistic"
    assert (
        get_estimator("classifier", *parsed).options.classifier == "logistic"
    )  # picks its own from all of them
    assert get_estimator("gmm", folds=3).folds == 3  # cross-fitting is every estimator's
    with pytest.raises(ValueError, match="no option.*ubm_components.*valid options"):
        get_estimator("classifier", ubm_components=8)


def test_bad_inputs_get_clear_errors():
    ok = np.zeros((20, 2))
    with pytest.raises(ValueError, match="same embedder"):
        estimate(ok, np.zeros((20, 3)), "classifier")
    with pytest.raises(ValueError, match="NaN or infinite"):
        estimate(np.full((20, 2), np.nan), ok, "classifier")
    with pytest.raises(ValueError, match="at least 5 target"):
        estimate(ok[:3], ok, "classifier")
    with pytest.raises(ValueError, match="unknown ratio method"):
        estimate(ok, ok, "kde")
    with pytest.raises(ValueError, match="unknown classifier model"):
        estimate(ok + np.arange(20)[:, None], ok, "classifier", classifier="svm")
    with pytest.raises(ValueError, match="folds must be >= 2"):
        estimate(ok, ok, "classifier", folds=1)
    with pytest.raises(ValueError, match="list of per-utterance frame matrices"):
        estimate(ok, [ok], "gmm_ubm")
    with pytest.raises(ValueError, match="pca_dim=2 must be smaller"):
        estimate(ok, ok, "gmm", pca_dim=2)
