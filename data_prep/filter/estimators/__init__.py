"""Density-ratio estimators by name: log r(x) = log p(x) - log q(x) for each candidate.

p is the target distribution (real target speech), q the proposal (whatever the generators
produced). One estimator a module, each a subclass of :class:`Estimator` with its own options
dataclass (its keys of the `filter` section): ``classifier`` (prior-corrected logits),
``gmm`` (two BIC-sized Gaussian mixtures), ``gmm_ubm`` (frame-level UBM with a MAP-adapted target
model, Platt-calibrated). Every one is cross-fitted over folds that keep each :class:`Groups`
label whole (``crossfit``). Adding one: a module with the class, and its import and name below.
Everything here is a pure function of numpy arrays, so it is tested without audio.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from data_prep.filter.estimators.base import AUC_WARN, DEFAULT_FOLDS, Estimator, Groups, RatioResult
from data_prep.filter.estimators.classifier import Classifier
from data_prep.filter.estimators.gmm import GMM
from data_prep.filter.estimators.gmm_ubm import GMMUBM

__all__ = [
    "AUC_WARN", "ESTIMATORS", "Estimator", "Groups", "RatioResult", "estimate", "get_estimator", "option_types",
]  # fmt: skip

# In the order `--help` lists them; `method` offers exactly these.
ESTIMATORS: dict[str, type[Estimator]] = {cls.name: cls for cls in (Classifier, GMM, GMMUBM)}


def option_types() -> tuple[type, ...]:
    """The options dataclasses of every estimator, in registry order (the `filter` section's)."""
    return tuple(cls.Options for cls in ESTIMATORS.values())


def get_estimator(
    method: str, *options: Any, pca_dim: int = 0, folds: int = DEFAULT_FOLDS, **fields: Any
) -> Estimator:
    """The estimator ``method``, configured by the instance of its ``Options`` among ``options``
    (the stage passes every parsed options dataclass; none: the defaults), with ``fields``
    replaced (e.g. ``get_estimator("gmm_ubm", ubm_components=8)``)."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown ratio method {method!r}; choose one of {list(ESTIMATORS)}")
    cls = ESTIMATORS[method]
    own = next((o for o in options if isinstance(o, cls.Options)), cls.Options())
    valid = [f.name for f in dataclasses.fields(cls.Options)]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"ratio method {method!r} has no option(s) {unknown}; valid options: {valid}")
    return cls(dataclasses.replace(own, **fields), pca_dim=pca_dim, folds=folds)


def estimate(
    target,
    candidates,
    method: str = "classifier",
    *,
    seed: int = 0,
    groups=None,
    pca_dim: int = 0,
    folds: int = DEFAULT_FOLDS,
    **options,
) -> RatioResult:
    """log r for every candidate with ``method``'s ``fit_score`` (arguments there); ``options``
    are fields of its options dataclass."""
    return get_estimator(method, pca_dim=pca_dim, folds=folds, **options).fit_score(
        target, candidates, groups, seed
    )
