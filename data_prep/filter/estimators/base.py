"""The interface every density-ratio estimator implements, what it returns, and the group labels
that keep near-copies of one utterance in one cross-fitting fold."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from core.seeding import stream_rng

# Cross-fitting folds unless told otherwise: each model trains on 80% of the data.
DEFAULT_FOLDS = 5
# A held-out AUC above this means the sets barely overlap. For two equal-variance Gaussians an AUC
# of 0.95 is a mean shift of 2.33 standard deviations, where the importance weights of q-samples
# have E_q[r^2] = exp(2.33^2): the effective sample size is under 0.5% of the candidates.
AUC_WARN = 0.95


@dataclass(frozen=True)
class Groups:
    """Group labels over the targets and the candidates jointly: points that share a label sit in
    the same cross-fitting fold, so none is scored by a model that trained on another member.

    A perturbed copy of a real utterance is that utterance again; its parent may be a *target*
    utterance. So a target's label is its own id and a candidate's is its ``parent_id`` when it
    has one, else its own id (:meth:`from_ids`): copies of target t are then scored by a model that
    never saw t. Labels are compared as given (strings or integers; one type for both sets).
    """

    target: np.ndarray
    candidates: np.ndarray

    @classmethod
    def from_ids(cls, target_ids: Sequence, candidate_ids: Sequence, parent_ids: Sequence) -> Groups:
        """The labels of the dataset columns ``id`` (both sets) and ``parent_id`` (candidates; empty
        for a candidate that copies nothing)."""
        labels = [parent or own for own, parent in zip(candidate_ids, parent_ids, strict=True)]
        return cls(np.asarray(list(target_ids), dtype=str), np.asarray(labels, dtype=str))

    @classmethod
    def coerce(cls, groups, m: int, n: int) -> Groups | None:
        """``groups`` as a checked :class:`Groups`: None, a Groups, or a (target labels, candidate
        labels) pair."""
        if groups is None:
            return None
        if not isinstance(groups, Groups):
            if not (isinstance(groups, tuple) and len(groups) == 2):
                raise TypeError(
                    "groups must be a Groups or a (target_labels, candidate_labels) pair: a target's label is its id, "
                    "a candidate's its parent_id (else its own id)"
                )
            groups = cls(np.asarray(groups[0]), np.asarray(groups[1]))
        if len(groups.target) != m or len(groups.candidates) != n:
            raise ValueError(
                f"groups has {len(groups.target)} target and {len(groups.candidates)} candidate labels for "
                f"{m} targets and {n} candidates"
            )
        return groups


@dataclass
class RatioResult:
    """What an estimator returns.

    ``fold`` is the cross-fitting fold whose model scored each candidate. ``auc`` is the
    target-vs-candidates AUC of the out-of-fold log ratios. ``target_log_ratio`` holds the
    out-of-fold log r of the target points (for histograms and the skill). ``skill`` is the
    cross-fitted log-loss skill against the prior-only baseline (``crossfit.ratio_skill``):
    ``skill["significant"]`` False means the ratios are indistinguishable from noise.
    ``space`` maps an (n, d) input matrix (embeddings or frames) into the space the estimator fits
    in (None: the input space itself), so diagnostics can be measured where the estimator looks.
    ``details`` is JSON-serializable: what was fitted and why, for the filter's report.
    """

    log_ratio: np.ndarray
    fold: np.ndarray
    auc: float | None
    details: dict[str, Any] = field(default_factory=dict)
    target_log_ratio: np.ndarray | None = None
    skill: dict[str, Any] | None = None
    space: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def has_skill(self) -> bool:
        """False only when a skill was measured and is not significantly above the baseline."""
        return self.skill is None or bool(self.skill["significant"])


class Estimator(abc.ABC):
    """Estimates log r(x) = log p(x) - log q(x) for every candidate x.

    A subclass sets ``name`` (the `method` of the `filter` section), ``summary`` (a few words for
    ``--help``), ``Options`` (a dataclass whose
    fields are its own keys of that section, each ``core.config.arg(default, help)``; field names
    must not clash with other estimators' or ``FilterArgs``'), and ``frames`` (True: it scores
    per-utterance frame matrices instead of one embedding per utterance).
    ``pca_dim`` > 0 projects the inputs onto that many principal components first; ``folds`` is
    the number of cross-fitting folds (every estimator is cross-fitted).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type]
    frames: ClassVar[bool] = False

    def __init__(self, options: Any = None, *, pca_dim: int = 0, folds: int = DEFAULT_FOLDS) -> None:
        self.options = self.Options() if options is None else options
        if not isinstance(self.options, self.Options):
            raise TypeError(f"{self.name} takes {self.Options.__name__}, got {type(self.options).__name__}")
        self.pca_dim, self.folds = pca_dim, folds

    @abc.abstractmethod
    def fit_score(self, target, candidates, groups=None, seed: int = 0) -> RatioResult:
        """Fit on ``target`` (m, d) and ``candidates`` (n, d) (a 1-D array is points in one
        dimension; with ``frames``, sequences of (T_i, d) frame matrices) and score every candidate.

        ``groups`` (a :class:`Groups`, a (target labels, candidate labels) pair, or None: every
        point its own group): points that share a label, across both sets, are never split between
        a model's training and scoring data. The same ``seed`` and inputs give the same result.
        """

    @staticmethod
    def rng(seed: int) -> np.random.Generator:
        """The stream for subsampling and PCA."""
        return stream_rng(seed, "filter", "estimator")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options}, pca_dim={self.pca_dim}, folds={self.folds})"
