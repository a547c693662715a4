"""The interface every density-ratio estimator implements, and the result it returns."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from core.seeding import stream_rng

# A held-out AUC above this means the sets barely overlap. For two equal-variance Gaussians an AUC
# of 0.95 is a mean shift of 2.33 standard deviations, where the importance weights of q-samples
# have E_q[r^2] = exp(2.33^2): the effective sample size is under 0.5% of the candidates.
AUC_WARN = 0.95


@dataclass
class RatioResult:
    """What an estimator returns.

    ``fold`` is the cross-fitting fold whose model scored each candidate (-1: not cross-fitted).
    ``auc`` is the held-out target-vs-candidates AUC of a cross-fitted classifier (None for the
    GMM methods; use ``diagnostics.two_sample_auc`` on held-out data there). ``target_log_ratio``
    holds the out-of-fold log r of the target points (classifier only), for histograms.
    ``details`` is JSON-serializable: what was fitted and why, for the filter's report.
    """

    log_ratio: np.ndarray
    fold: np.ndarray
    auc: float | None
    details: dict[str, Any] = field(default_factory=dict)
    target_log_ratio: np.ndarray | None = None


class Estimator(abc.ABC):
    """Estimates log r(x) = log p(x) - log q(x) for every candidate x.

    A subclass sets ``name`` (the `method` of the `filter` section), ``summary`` (a few words for
    ``--help``), ``Options`` (a dataclass whose
    fields are its own keys of that section, each ``core.config.arg(default, help)``; field names
    must not clash with other estimators' or ``FilterArgs``'), and ``frames`` (True: it scores
    per-utterance frame matrices instead of one embedding per utterance).
    ``pca_dim`` > 0 projects the inputs onto that many principal components first.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type]
    frames: ClassVar[bool] = False

    def __init__(self, options: Any = None, *, pca_dim: int = 0) -> None:
        self.options = self.Options() if options is None else options
        if not isinstance(self.options, self.Options):
            raise TypeError(f"{self.name} takes {self.Options.__name__}, got {type(self.options).__name__}")
        self.pca_dim = pca_dim

    @abc.abstractmethod
    def fit_score(self, target, candidates, groups=None, seed: int = 0) -> RatioResult:
        """Fit on ``target`` (m, d) and ``candidates`` (n, d) (a 1-D array is points in one
        dimension; with ``frames``, sequences of (T_i, d) frame matrices) and score every candidate.

        ``groups`` (n labels or None): candidates that share a label (e.g. perturbed copies of one
        utterance) are never split between a model's training and scoring data; estimators that
        are not cross-fitted ignore it. The same ``seed`` and inputs give the same result.
        """

    @staticmethod
    def rng(seed: int) -> np.random.Generator:
        """The stream for subsampling and PCA."""
        return stream_rng(seed, "filter", "estimator")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options}, pca_dim={self.pca_dim})"
