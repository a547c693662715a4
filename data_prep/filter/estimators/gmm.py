"""`gmm`: log r = log p_gmm(x) - log q_gmm(x), two Gaussian mixtures whose sizes and covariance
types BIC chooses, cross-fitted: the mixtures of fold k are fitted on the other folds, so a target
utterance's perturbed copies are scored by a target mixture that never saw it."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from core.config import arg
from data_prep.filter.estimators.base import Estimator, Groups, RatioResult
from data_prep.filter.estimators.crossfit import Folds, FoldSplit, cross_fit
from data_prep.filter.features import (
    FIT_MAX,
    SCORE_CHUNK,
    embedding_inputs,
    pooled_standardization,
    subsample,
)

logger = logging.getLogger(__name__)

# Variance floor on standardized data (0.1% of each feature's pooled variance): near-duplicate
# synthetic candidates would otherwise collapse a component to a point of infinite density.
GMM_REG_COVAR = 1e-3
# Mixture sizes are only tried with at least this many points per free parameter: below it EM is
# ill-conditioned and BIC's large-sample approximation meaningless, and skipping them is what
# keeps a 64-d search affordable (one full-covariance component already has 2,144 parameters).
MIN_POINTS_PER_PARAMETER = 5


@dataclass
class GMMOptions:
    max_components: int = arg(16, "gmm: most mixture components tried by the BIC search.", ge=1)


class GMM(Estimator):
    """Each fold's mixtures come from their own BIC search on that fold's training data; the
    candidate mixture sees at most FIT_MAX of the fold's candidates."""

    name = "gmm"
    summary = "two Gaussian mixtures"
    Options = GMMOptions

    def fit_score(self, target, candidates, groups=None, seed: int = 0) -> RatioResult:
        rng = self.rng(seed)
        t, c, pca, project = embedding_inputs(target, candidates, self.pca_dim, rng, seed)
        # Standardizing both sets with the same affine map leaves log p - log q unchanged (the
        # Jacobians cancel) and gives EM well-scaled inputs for the variance floor.
        mean, scale = pooled_standardization(t, c)
        t = (t - mean) / scale
        folds = Folds.make(len(t), len(c), self.folds, Groups.coerce(groups, len(t), len(c)), seed)

        def fit_fold(split: FoldSplit) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
            c_fit = (c[subsample(split.c_train, FIT_MAX, rng)] - mean) / scale
            p_gmm, p_table = fit_gmm_bic(t[split.t_train], seed, self.options.max_components)
            q_gmm, q_table = fit_gmm_bic(c_fit, seed, self.options.max_components)
            c_lr = np.empty(len(split.c_held))
            for start in range(0, len(c_lr), SCORE_CHUNK):
                chunk = (c[split.c_held[start : start + SCORE_CHUNK]] - mean) / scale
                c_lr[start : start + len(chunk)] = p_gmm.score_samples(chunk) - q_gmm.score_samples(chunk)
            held = t[split.t_held]
            t_lr = p_gmm.score_samples(held) - q_gmm.score_samples(held) if len(held) else np.empty(0)
            info = {
                "fit_points": {"target": len(split.t_train), "candidates": len(c_fit)},
                "target_gmm": _summary(p_gmm, p_table),
                "candidate_gmm": _summary(q_gmm, q_table),
            }
            return t_lr, c_lr, info

        result = cross_fit(folds, fit_fold, "gmm cross-fit")
        first = result.details["target_gmm"][0], result.details["candidate_gmm"][0]
        logger.info(
            "gmm (fold 0): target %d %s components, candidates %d %s components", first[0]["components"],
            first[0]["covariance"], first[1]["components"], first[1]["covariance"],
        )  # fmt: skip
        result.details.update(method=self.name, pca=pca)
        result.space = project
        return result


def _summary(gmm: GaussianMixture, table: list[dict[str, Any]]) -> dict[str, Any]:
    return {"components": gmm.n_components, "covariance": gmm.covariance_type, "bic": table}


def fit_gmm_bic(
    x: np.ndarray,
    seed: int = 0,
    max_components: int = 16,
    covariance_types: Sequence[str] = ("full", "diag"),
) -> tuple[GaussianMixture, list[dict[str, Any]]]:
    """The Gaussian mixture with the lowest BIC over 1, 2, 4, ... ``max_components`` components
    and the given covariance types; returns it and the table of (components, covariance, BIC).

    For each covariance type the search stops at the first size whose BIC is worse than the
    previous one (BIC is close to unimodal in the size), and skips sizes with fewer than
    ``MIN_POINTS_PER_PARAMETER`` points per parameter, except one diagonal Gaussian, which is
    always fitted (the variance floor keeps it proper) so a small target set still gets a density.
    """
    n, d = x.shape
    if n < 2:
        raise ValueError(f"a Gaussian mixture needs at least 2 points, got {n}")
    best: GaussianMixture | None = None
    best_bic = math.inf
    table: list[dict[str, Any]] = []
    for cov in covariance_types:
        previous = math.inf
        k = 1
        while k <= max_components and (
            (k == 1 and cov == "diag") or _gmm_parameters(k, d, cov) * MIN_POINTS_PER_PARAMETER <= n
        ):
            gmm = GaussianMixture(
                k, covariance_type=cov, reg_covar=GMM_REG_COVAR, max_iter=200, random_state=seed
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # reported through `converged` below
                gmm.fit(x)
            bic = float(gmm.bic(x))
            table.append({"components": k, "covariance": cov, "bic": bic, "converged": bool(gmm.converged_)})
            if bic < best_bic:
                best, best_bic = gmm, bic
            if bic >= previous:
                break
            previous = bic
            k *= 2
    if best is None:
        raise ValueError(
            f"no mixture fitted: {n} points are too few for covariance_types={tuple(covariance_types)}; include 'diag'"
        )
    if best.n_components == 1 and best.covariance_type == "diag" and n < MIN_POINTS_PER_PARAMETER * 2 * d:
        logger.warning(
            "only %d points for a %d-dim Gaussian: its density is rough; consider pca_dim to reduce the dimension",
            n,
            d,
        )
    return best, table


def _gmm_parameters(k: int, d: int, cov: str) -> int:
    per_cov = {"full": d * (d + 1) // 2, "diag": d, "spherical": 1}[cov]
    return k * (d + per_cov) + k - 1
