"""`classifier`: log r from a cross-fitted probabilistic classifier of target vs. candidates.

A classifier c(x) = P(target | x) trained on target vs. candidates gives, by Bayes' rule,
c/(1-c) = (m_train p(x)) / (n_train q(x)), so log r = logit c(x) + log(n_train / m_train), with
the *training* counts of the fold that made the model (no class weights: its odds carry the
training prior). Cross-fitted: targets and candidates are both split into K folds; the model for
fold k is trained on the other K-1 folds and scores only fold k, so no candidate is scored by a
model that saw it (nor, with ``groups``, by one that saw a member of its group).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from core.config import arg
from core.seeding import stream_rng
from data_prep.filter.classifiers import MODELS, logit, make_classifier
from data_prep.filter.estimators.base import AUC_WARN, Estimator, RatioResult
from data_prep.filter.features import SCORE_CHUNK, embedding_inputs, pooled_standardization

logger = logging.getLogger(__name__)


@dataclass
class ClassifierOptions:
    classifier: str = arg("logistic", "Classifier of the `classifier` method.", choices=list(MODELS))
    folds: int = arg(5, "Cross-fitting folds: each candidate is scored by a model that never saw it.")


class Classifier(Estimator):
    """``options.classifier`` picks the model: ``logistic``; ``quadratic`` = logistic on degree-2
    features, exact for Gaussian p and q, for low dimensions; ``mlp``/``gbm`` with Platt calibration."""

    name = "classifier"
    summary = "cross-fitted logistic regression"
    Options = ClassifierOptions

    def fit_score(self, target, candidates, groups=None, seed: int = 0) -> RatioResult:
        folds, model = self.options.folds, self.options.classifier
        if folds < 2:
            raise ValueError(f"folds must be >= 2 (cross-fitting needs a held-out fold), got {folds}")
        t, c, pca = embedding_inputs(target, candidates, self.pca_dim, self.rng(seed), seed)
        result = cross_fit_log_ratio(
            t, c, lambda: make_classifier(model, seed), folds=folds, seed=seed, groups=groups
        )
        result.details.update(model=model, method=self.name, pca=pca)
        return result


def fold_ids(n: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A random fold index in [0, folds) per point, fold sizes differing by at most one."""
    out = np.empty(n, dtype=np.int64)
    out[rng.permutation(n)] = np.arange(n) % folds
    return out


def group_fold_ids(groups, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold index in [0, folds) per point that is the same for every point of a group.

    Like scikit-learn's GroupKFold, groups go largest first to the fold with the fewest points, so
    fold sizes stay close; unlike it, ties between equal-sized groups are broken by a seeded
    shuffle, so another seed gives other folds.
    """
    labels, inverse, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    if len(labels) < folds:
        raise ValueError(f"{folds}-fold cross-fitting needs at least {folds} groups, got {len(labels)}")
    order = rng.permutation(len(labels))
    order = order[np.argsort(-sizes[order], kind="stable")]
    load = np.zeros(folds, dtype=np.int64)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for g in order:
        k = int(np.argmin(load))
        fold_of[g] = k
        load[k] += sizes[g]
    return fold_of[inverse.ravel()]


def cross_fit_log_ratio(
    target: np.ndarray,
    candidates: np.ndarray,
    make_model: Callable[[], BaseEstimator],
    folds: int = 5,
    seed: int = 0,
    groups=None,
) -> RatioResult:
    """K-fold cross-fitted classifier log ratio.

    Both sets are split into ``folds`` folds (the candidates by :func:`group_fold_ids` when
    ``groups`` is given, else at random); the model for fold k (``make_model()``, a fresh
    unfitted binary classifier with ``predict_proba``, or a logistic regression) is trained on the
    targets and candidates outside fold k and scores the candidates and targets in fold k. The
    prior correction uses that model's own training counts. Inputs are standardized with the
    pooled mean and deviation (no labels involved; the density ratio is invariant to an affine map
    of the inputs).
    """
    m, n = len(target), len(candidates)
    if m < folds or n < folds:
        raise ValueError(
            f"{folds}-fold cross-fitting needs at least {folds} target and candidate points, got {m} targets "
            f"and {n} candidates: lower `folds` or provide more data"
        )
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} labels for {n} candidates")
    rng = stream_rng(seed, "filter", "folds")
    t_fold = fold_ids(m, folds, rng)
    c_fold = fold_ids(n, folds, rng) if groups is None else group_fold_ids(groups, folds, rng)
    dtype = np.result_type(target.dtype, candidates.dtype, np.float32)
    candidates = candidates.astype(dtype, copy=False)
    mean, scale = (v.astype(dtype) for v in pooled_standardization(target, candidates))

    def standardize(x: np.ndarray) -> np.ndarray:  # in place: x is always a fresh copy or the buffer
        x -= mean
        x /= scale
        return x

    ts = standardize(target.astype(dtype))
    # One training buffer for every fold: allocating a fresh 800k x 64 matrix per fold cost more
    # (page faults, measured 2.5 s CPU for five) than filling a reused one (0.2 s).
    max_train = max(int((t_fold != k).sum() + (c_fold != k).sum()) for k in range(folds))
    x_buf = np.empty((max_train, target.shape[1]), dtype=dtype)
    y_buf = np.empty(max_train, dtype=np.int8)

    log_ratio = np.empty(n, dtype=np.float64)
    target_log_ratio = np.empty(m, dtype=np.float64)
    fold_auc: list[float] = []
    log_prior: list[float] = []
    not_converged = 0
    for k in tqdm(range(folds), desc="cross-fit folds", leave=False):
        t_train, c_train = t_fold != k, np.flatnonzero(c_fold != k)
        m_train, n_train = int(t_train.sum()), len(c_train)
        x, y = x_buf[: m_train + n_train], y_buf[: m_train + n_train]
        x[:m_train] = ts[t_train]
        # mode="clip" writes straight into the buffer ("raise" buffers a copy); the indices are valid.
        np.take(candidates, c_train, axis=0, out=x[m_train:], mode="clip")
        standardize(x[m_train:])
        y[:m_train], y[m_train:] = 1, 0
        clf = make_model()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(x, y)
        not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        correction = math.log(n_train / m_train)
        log_prior.append(correction)
        held_c = np.flatnonzero(c_fold == k)
        for start in range(0, len(held_c), SCORE_CHUNK):
            rows = held_c[start : start + SCORE_CHUNK]
            log_ratio[rows] = logit(clf, standardize(candidates[rows])) + correction
        held_t = t_fold == k
        target_log_ratio[held_t] = logit(clf, ts[held_t]) + correction
        labels = np.r_[np.ones(held_t.sum()), np.zeros(len(held_c))]
        scores = np.r_[target_log_ratio[held_t], log_ratio[held_c]]
        fold_auc.append(float(roc_auc_score(labels, scores)))

    auc = float(np.mean(fold_auc))
    details: dict[str, Any] = {
        "folds": folds,
        "n_target": m,
        "n_candidates": n,
        "fold_auc": fold_auc,
        "log_prior_correction": log_prior,
        "folds_not_converged": not_converged,
    }
    if not_converged:
        logger.warning(
            "%d of %d fold models did not converge; their ratios are less reliable", not_converged, folds
        )
    logger.info(
        "classifier cross-fit: held-out AUC %.3f (folds %s)", auc, ", ".join(f"{v:.3f}" for v in fold_auc)
    )
    if auc > AUC_WARN:
        message = (
            f"held-out AUC {auc:.3f} > {AUC_WARN}: target and candidates barely overlap, so the ratios explode and "
            "few candidates will be accepted; try a lower-dimensional embedding (pca_dim, or MFCC statistics instead "
            "of a speaker or encoder embedding) or candidates closer to the target"
        )
        logger.warning(message)
        details["warning"] = message
    return RatioResult(
        log_ratio=log_ratio, fold=c_fold, auc=auc, details=details, target_log_ratio=target_log_ratio
    )
