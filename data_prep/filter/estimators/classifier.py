"""`classifier`: log r from a cross-fitted probabilistic classifier of target vs. candidates.

A classifier c(x) = P(target | x) trained on target vs. candidates gives, by Bayes' rule,
c/(1-c) = (m_train p(x)) / (n_train q(x)), so log r = logit c(x) + log(n_train / m_train), with
the *training* counts of the fold that made the model (no class weights: its odds carry the
training prior). Cross-fitted (``crossfit``): the model for fold k is trained on the other K-1
folds and scores only fold k, and with ``groups`` no point is scored by a model that saw a member
of its group (a perturbed copy is never scored by a model that trained on its parent).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from core.config import arg
from core.seeding import derive_seed, stream_rng
from data_prep.filter.classifiers import INNER_FOLDS, MODELS, chosen, logit, make_classifier
from data_prep.filter.estimators.base import Estimator, Groups, RatioResult
from data_prep.filter.estimators.crossfit import Folds, FoldSplit, cross_fit
from data_prep.filter.features import SCORE_CHUNK, embedding_inputs, pooled_standardization

logger = logging.getLogger(__name__)

# Candidates each fold's model trains on, per training target, when there are more: the ratio's
# precision is limited by the scarcer class, so beyond ~20 candidates per target more of them
# shrink its variance by under 5% while the fit's cost grows linearly (a 1M-candidate fit would
# take minutes). Every candidate is still scored; the prior correction uses the counts trained on.
CANDIDATES_PER_TARGET = 20
# ... but never fewer than this many: small target sets still see a broad sample of q.
MIN_FIT_CANDIDATES = 20_000


@dataclass
class ClassifierOptions:
    classifier: str = arg(
        "quadratic",
        "Classifier of the `classifier` method: quadratic (logistic regression on linear and quadratic terms, "
        "regularization chosen by cross-validated log-loss: right for shifts and for narrow targets), logistic "
        "(linear terms only: an exponential tilt of q; fastest), mlp or gbm (Platt-calibrated).",
        choices=list(MODELS),
    )


class Classifier(Estimator):
    """``options.classifier`` picks the model (``classifiers.make_classifier``)."""

    name = "classifier"
    summary = "cross-fitted classifier (quadratic logistic regression, CV-chosen regularization)"
    Options = ClassifierOptions

    def fit_score(self, target, candidates, groups=None, seed: int = 0) -> RatioResult:
        t, c, pca, project = embedding_inputs(target, candidates, self.pca_dim, self.rng(seed), seed)
        result = cross_fit_log_ratio(
            t, c, lambda cv: make_classifier(self.options.classifier, seed, cv=cv), self.folds, seed, groups
        )
        result.details.update(model=self.options.classifier, method=self.name, pca=pca)
        result.space = project
        return result


def cross_fit_log_ratio(
    target, candidates, make_model, folds: int = 5, seed: int = 0, groups=None
) -> RatioResult:
    """K-fold cross-fitted classifier log ratio.

    ``make_model(cv)`` returns a fresh unfitted binary classifier with ``predict_proba`` (or a
    logistic regression); ``cv`` is the (train, test) splits of its own cross-validation inside
    the training fold, grouped like the folds. Each fold's model trains on the targets and (at
    most CANDIDATES_PER_TARGET per target of) the candidates outside the fold. Inputs are
    standardized with the pooled mean and deviation (no labels involved; the density ratio is
    invariant to an affine map of the inputs).
    """
    target, candidates = np.asarray(target), np.asarray(candidates)
    m, n = len(target), len(candidates)
    split_folds = Folds.make(m, n, folds, Groups.coerce(groups, m, n), seed)
    dtype = np.result_type(target.dtype, candidates.dtype, np.float32)
    mean, scale = (v.astype(dtype) for v in pooled_standardization(target, candidates))

    def standardize(x: np.ndarray) -> np.ndarray:
        return (x.astype(dtype, copy=False) - mean) / scale

    ts = standardize(target)
    fit_rng = stream_rng(seed, "filter", "fit candidates")

    def fit_fold(split: FoldSplit) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        limit = max(MIN_FIT_CANDIDATES, CANDIDATES_PER_TARGET * len(split.t_train))
        c_rows = split.c_train
        if len(c_rows) > limit:
            c_rows = np.sort(fit_rng.choice(c_rows, size=limit, replace=False))
        x = np.concatenate([ts[split.t_train], standardize(candidates[c_rows])])
        y = np.r_[np.ones(len(split.t_train), dtype=np.int8), np.zeros(len(c_rows), dtype=np.int8)]
        inner = split_folds.inner(split.t_train, c_rows, INNER_FOLDS, derive_seed(seed, split.k))
        clf = make_model(inner)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(x, y)
        correction = math.log(len(c_rows) / len(split.t_train))
        c_lr = np.empty(len(split.c_held))
        for start in range(0, len(c_lr), SCORE_CHUNK):
            rows = split.c_held[start : start + SCORE_CHUNK]
            c_lr[start : start + len(rows)] = logit(clf, standardize(candidates[rows])) + correction
        t_lr = logit(clf, ts[split.t_held]) + correction
        info = {
            "log_prior_correction": correction,
            "fit_candidates": len(c_rows),
            "search": chosen(clf),
            "not_converged": sum(issubclass(w.category, ConvergenceWarning) for w in caught),
        }
        return t_lr, c_lr, info

    result = cross_fit(split_folds, fit_fold, "classifier cross-fit")
    not_converged = sum(result.details["not_converged"])
    if not_converged:
        logger.warning(
            "%d fits in %d folds did not converge; their ratios are less reliable", not_converged, folds
        )
    return result
