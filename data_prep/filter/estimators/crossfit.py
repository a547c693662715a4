"""Cross-fitting, shared by every estimator: folds that keep each group whole across the targets
and the candidates, the loop that trains on K-1 folds and scores the K-th, and what the
out-of-fold log ratios say (AUC per fold, log-loss skill against the prior-only baseline)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from core.seeding import stream_rng
from data_prep.filter.estimators.base import AUC_WARN, Groups, RatioResult

logger = logging.getLogger(__name__)

# The skill counts only when the log-loss gain over the prior-only baseline exceeds this many
# standard errors: one-sided, about 2% of no-skill fits pass by chance (fewer in practice: a
# cross-fitted model that learned noise scores *below* the baseline on held-out points).
SKILL_Z = 2.0


@dataclass(frozen=True)
class FoldSplit:
    """Indices of one fold: train on ``t_train`` and ``c_train``, score ``t_held`` and ``c_held``."""

    k: int
    t_train: np.ndarray
    c_train: np.ndarray
    t_held: np.ndarray
    c_held: np.ndarray


@dataclass(frozen=True)
class Folds:
    """A fold per target and per candidate, and the integer group label of each (points that share
    a label share a fold)."""

    target: np.ndarray
    candidates: np.ndarray
    t_label: np.ndarray
    c_label: np.ndarray
    count: int
    grouped: bool

    @classmethod
    def make(cls, m: int, n: int, folds: int, groups: Groups | None, seed: int) -> Folds:
        """Seeded folds: with ``groups``, whole groups go to a fold (:func:`grouped_fold_ids`);
        without, every point is its own group and the folds are random (:func:`fold_ids`)."""
        if folds < 2:
            raise ValueError(f"folds must be >= 2 (cross-fitting needs a held-out fold), got {folds}")
        if m < folds or n < folds:
            raise ValueError(
                f"{folds}-fold cross-fitting needs at least {folds} target and candidate points, got {m} targets "
                f"and {n} candidates: lower `folds` or provide more data"
            )
        rng = stream_rng(seed, "filter", "folds")
        if groups is None:
            t_label, c_label = np.arange(m), m + np.arange(n)
            return cls(fold_ids(m, folds, rng), fold_ids(n, folds, rng), t_label, c_label, folds, False)
        _, inverse = np.unique(np.concatenate([groups.target, groups.candidates]), return_inverse=True)
        t_label, c_label = inverse[:m], inverse[m:]
        return cls(*grouped_fold_ids(t_label, c_label, folds, rng), t_label, c_label, folds, True)

    def split(self, k: int) -> FoldSplit:
        t, c = self.target, self.candidates
        return FoldSplit(k, np.flatnonzero(t != k), np.flatnonzero(c != k), np.flatnonzero(t == k),
                         np.flatnonzero(c == k))  # fmt: skip

    def inner(
        self, t_rows: np.ndarray, c_rows: np.ndarray, folds: int, seed: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(train, test) positions over the stacked rows [targets ``t_rows``; candidates ``c_rows``]
        for a model's own cross-validation inside a training fold, with the same grouping."""
        rng = stream_rng(seed, "filter", "inner folds")
        t_fold, c_fold = grouped_fold_ids(self.t_label[t_rows], self.c_label[c_rows], folds, rng)
        fold = np.r_[t_fold, c_fold]
        return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(folds)]


def fold_ids(n: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A random fold index in [0, folds) per point, fold sizes differing by at most one."""
    out = np.empty(n, dtype=np.int64)
    out[rng.permutation(n)] = np.arange(n) % folds
    return out


def grouped_fold_ids(
    t_label: np.ndarray, c_label: np.ndarray, folds: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A fold per target and per candidate, the same for every point of a group (integer labels
    shared across the two sets), with both the targets and the candidates spread evenly.

    Stratified: groups that hold a target are spread first, balancing target counts (their
    copies come along); the candidate-only groups then even out the candidates. Within each,
    largest groups first to the emptiest fold (as scikit-learn's GroupKFold), ties broken by a
    seeded shuffle so another seed gives other folds.
    """
    n_groups = int(max(t_label.max(initial=-1), c_label.max(initial=-1))) + 1
    n_t = np.bincount(t_label, minlength=n_groups)
    n_c = np.bincount(c_label, minlength=n_groups)
    with_target, without = np.flatnonzero(n_t > 0), np.flatnonzero((n_t == 0) & (n_c > 0))
    if len(with_target) < folds:
        raise ValueError(
            f"{folds}-fold cross-fitting needs at least {folds} groups of target utterances, got {len(with_target)}"
        )
    fold_of = np.full(n_groups, -1, dtype=np.int64)
    fold_of[with_target] = _spread(n_t[with_target], np.zeros(folds, dtype=np.int64), rng)
    c_load = np.bincount(fold_of[with_target], weights=n_c[with_target], minlength=folds).astype(np.int64)
    fold_of[without] = _spread(n_c[without], c_load, rng)
    return fold_of[t_label], fold_of[c_label]


def _spread(sizes: np.ndarray, load: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fold per group: each group of several points goes to the fold with the smallest load, the
    largest first (a loop, but over multi-point groups only); single points then fill the folds up
    to an even level (vectorized: millions of candidates are single points)."""
    load = load.copy()
    order = rng.permutation(len(sizes))
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of = np.empty(len(sizes), dtype=np.int64)
    singles = order[sizes[order] == 1]
    for g in order[sizes[order] > 1]:
        k = int(np.argmin(load))
        fold_of[g] = k
        load[k] += sizes[g]
    fold_of[singles] = np.repeat(np.arange(len(load)), _water_fill(load, len(singles)))
    return fold_of


def _water_fill(load: np.ndarray, count: int) -> np.ndarray:
    """How many of ``count`` single points each fold gets so the loads end as even as possible."""
    lo, hi = int(load.min()), int(load.max()) + count
    while lo < hi:  # the highest level L with sum(max(0, L - load)) <= count
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.maximum(mid - load, 0).sum() <= count else (lo, mid - 1)
    extra = np.maximum(lo - load, 0)
    rest = count - int(extra.sum())  # fewer than the folds at level L, else L + 1 would fit
    extra[np.flatnonzero(load + extra == lo)[:rest]] += 1
    return extra


FitFold = Callable[[FoldSplit], tuple[np.ndarray, np.ndarray, dict[str, Any]]]
# Maps the out-of-fold scores of every target and candidate to log ratios (e.g. Platt scaling
# fitted across folds), returning them and a dict for the report.
Calibrate = Callable[[Folds, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, dict[str, Any]]]


def cross_fit(folds: Folds, fit_fold: FitFold, desc: str, calibrate: Calibrate | None = None) -> RatioResult:
    """Run ``fit_fold`` on every fold: it trains on the split's training indices and returns the
    log r (or, with ``calibrate``, a score that ``calibrate`` turns into log r) of its held-out
    targets and candidates, plus a dict of numbers for the report (each key becomes a per-fold
    list in ``details``). Returns the out-of-fold ratios with their AUC per fold and their
    log-loss skill."""
    m, n = len(folds.target), len(folds.candidates)
    log_ratio, target_log_ratio = np.empty(n), np.empty(m)
    per_fold: dict[str, list] = {}
    for k in tqdm(range(folds.count), desc=desc, leave=False):
        split = folds.split(k)
        t_lr, c_lr, info = fit_fold(split)
        target_log_ratio[split.t_held], log_ratio[split.c_held] = t_lr, c_lr
        for key, value in info.items():
            per_fold.setdefault(key, []).append(value)
    calibration = None
    if calibrate is not None:
        target_log_ratio, log_ratio, calibration = calibrate(folds, target_log_ratio, log_ratio)
    fold_auc = [
        _auc(target_log_ratio[folds.target == k], log_ratio[folds.candidates == k])
        for k in range(folds.count)
    ]
    valid = [a for a in fold_auc if not math.isnan(a)]
    auc = float(np.mean(valid)) if valid else None
    skill = ratio_skill(target_log_ratio, log_ratio)
    details: dict[str, Any] = {
        "folds": folds.count,
        "grouped_folds": folds.grouped,
        "n_target": m,
        "n_candidates": n,
        "fold_auc": fold_auc,
        **per_fold,
        **({"calibration": calibration} if calibration is not None else {}),
        "skill": skill,
    }
    logger.info(
        "%s: out-of-fold AUC %s, log-loss skill %.4f (gain %.4f +- %.4f nats%s)", desc,
        "n/a" if auc is None else f"{auc:.3f}", skill["skill"], skill["gain"], skill["gain_se"],
        "" if skill["significant"] else ": no skill",
    )  # fmt: skip
    if auc is not None and auc > AUC_WARN:
        message = (
            f"held-out AUC {auc:.3f} > {AUC_WARN}: target and candidates barely overlap, so the ratios explode and "
            "few candidates will be accepted; try a lower-dimensional embedding (pca_dim, or MFCC statistics instead "
            "of a speaker or encoder embedding) or candidates closer to the target"
        )
        logger.warning(message)
        details["warning"] = message
    return RatioResult(log_ratio, folds.candidates.copy(), auc, details, target_log_ratio, skill)


def ratio_skill(target_log_ratio, log_ratio) -> dict[str, Any]:
    """Cross-fitted log-loss skill of the log ratios against the prior-only baseline (r = 1).

    With the classes weighted equally, P(target | x) = r / (1 + r) = sigmoid(log r), so the
    balanced log-loss 1/2 [mean over targets of -log sigmoid(l) + mean over candidates of
    -log sigmoid(-l)] is a proper score of the ratio itself, whatever the class sizes, and the
    prior-only baseline (every l = 0) scores log 2. ``skill`` = 1 - loss / log 2 (0: no better than
    no ratio; 1: perfect); ``gain`` = log 2 - loss in nats with its standard error (points treated
    as independent); ``significant`` when gain > SKILL_Z standard errors.
    """
    lt, lc = np.asarray(target_log_ratio, np.float64), np.asarray(log_ratio, np.float64)
    gain_t = math.log(2) - np.logaddexp(0.0, -lt)  # per-point improvement over the baseline
    gain_c = math.log(2) - np.logaddexp(0.0, lc)
    gain = 0.5 * (gain_t.mean() + gain_c.mean())
    se = 0.5 * math.sqrt(gain_t.var() / len(lt) + gain_c.var() / len(lc))
    loss = math.log(2) - gain
    return {
        "log_loss": float(loss),
        "prior_log_loss": math.log(2),
        "skill": float(1 - loss / math.log(2)),
        "gain": float(gain),
        "gain_se": float(se),
        "significant": bool(gain > SKILL_Z * se),
    }


def _auc(t_lr: np.ndarray, c_lr: np.ndarray) -> float:
    if len(t_lr) == 0 or len(c_lr) == 0:
        return math.nan
    return float(roc_auc_score(np.r_[np.ones(len(t_lr)), np.zeros(len(c_lr))], np.r_[t_lr, c_lr]))
