"""Did the filter work? Statistics comparing held-out target data with candidates and with the accepted set.

A filter that works moves the accepted set toward the target: a fresh classifier separates
held-out target from accepted candidates worse (AUC toward 0.5) than from all candidates, and the
MMD shrinks. The held-out target points must never have been used to fit the ratio estimator
(:func:`split_target` makes such a split), or these numbers flatter the filter.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from core.seeding import stream_rng
from data_prep.filter.classifiers import make_classifier
from data_prep.filter.features import as_matrix, subsample

logger = logging.getLogger(__name__)

# Points per set for the two-sample AUC: AUC does not depend on the class balance, so the larger
# set is subsampled; 20k per side puts the AUC's standard error near 0.003, far below what matters.
AUC_MAX_SIZE = 20_000
# Points per set for MMD: the pooled kernel matrix is (2 x 1000)^2 doubles = 32 MB, and 200
# permutations take about a second on 2 cores.
MMD_MAX_SIZE = 1_000
# Permutations of the MMD test: p-values resolve to 1/201, enough to call 0.01 and 0.05.
MMD_PERMUTATIONS = 200
# Points per set for the energy distance: O(n^2) distances, computed in blocks.
ENERGY_MAX_SIZE = 5_000
_BLOCK = 1_024


@dataclass
class MMDResult:
    mmd2: float  # unbiased estimate of MMD^2 (can be slightly negative when the sets agree)
    p_value: float  # permutation p-value of "same distribution"
    bandwidth: float  # RBF length scale (median heuristic)


def split_target(n: int, heldout_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted index arrays (fit, heldout) over n target points: fit the ratio on the first,
    run the diagnostics on the second."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    n_held = int(round(n * heldout_fraction))
    if n_held < 2 or n - n_held < 2:
        raise ValueError(
            f"cannot hold out {heldout_fraction:.0%} of {n} target points and keep 2 on each side"
        )
    perm = stream_rng(seed, "filter", "heldout").permutation(n)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def acceptance_rate(accepted) -> float:
    accepted = np.asarray(accepted, dtype=bool)
    if accepted.size == 0:
        raise ValueError("no candidates")
    return float(accepted.mean())


def pooled_zscores(t: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets in pooled z-scores. The MMD's single RBF bandwidth would otherwise see only the
    widest features (cepstra in dB span ~100 times the range of pitch in log Hz)."""
    pooled = np.concatenate([t, c]).astype(np.float64)
    mean, scale = pooled.mean(0), pooled.std(0)
    scale[scale == 0] = 1.0
    return (t - mean) / scale, (c - mean) / scale


def effective_sample_size(log_ratio) -> float:
    """(sum r)^2 / sum r^2 over the candidates, in log space: n when all ratios are equal, 1 when one dominates."""
    lr = np.asarray(log_ratio, dtype=np.float64)
    lr = lr[np.isfinite(lr)]
    if lr.size == 0:
        raise ValueError("no finite log ratio")
    return float(np.exp(2 * np.logaddexp.reduce(lr) - np.logaddexp.reduce(2 * lr)))


def two_sample_auc(
    target_heldout,
    sample,
    seed: int = 0,
    folds: int = 5,
    model: str = "logistic",
    max_size: int = AUC_MAX_SIZE,
) -> float | None:
    """Cross-validated AUC of a fresh classifier telling ``target_heldout`` from ``sample``.

    0.5: indistinguishable; 1.0: fully separable. Each set is subsampled to ``max_size``; the AUC
    is the mean over stratified folds. ``model`` is any of ``classifiers.MODELS``; a nonlinear one
    (``gbm``) also sees differences a linear ratio estimator could not correct. None (logged) when
    a set has fewer than 2 points.
    """
    rng = stream_rng(seed, "diagnostics", "auc")
    a = subsample(as_matrix(target_heldout, "target_heldout"), max_size, rng)
    b = subsample(as_matrix(sample, "sample"), max_size, rng)
    folds = min(folds, len(a), len(b))
    if folds < 2:
        logger.warning("two-sample AUC skipped: %d target and %d sample points (need 2 each)", len(a), len(b))
        return None
    x = StandardScaler().fit_transform(np.concatenate([a, b]))
    y = np.r_[np.ones(len(a), dtype=np.int8), np.zeros(len(b), dtype=np.int8)]
    aucs = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        clf = make_classifier(model, seed, calibrated=False).fit(x[train], y[train])  # AUC only ranks
        aucs.append(roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1]))
    return float(np.mean(aucs))


def mmd_test(
    x,
    y,
    seed: int = 0,
    permutations: int = MMD_PERMUTATIONS,
    max_size: int = MMD_MAX_SIZE,
) -> MMDResult:
    """RBF-kernel MMD^2 (unbiased) between two samples, with a permutation p-value.

    The bandwidth is the median heuristic (Gretton et al. 2012): sigma = median pairwise distance
    of the pooled points, k(a, b) = exp(-|a - b|^2 / (2 sigma^2)). Each set is subsampled to
    ``max_size``. All permutations are scored with one matrix product.
    """
    rng = stream_rng(seed, "diagnostics", "mmd")
    a = subsample(as_matrix(x, "x"), max_size, rng)
    b = subsample(as_matrix(y, "y"), max_size, rng)
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError(f"MMD needs at least 2 points per set, got {m} and {n}")
    z = np.concatenate([a, b]).astype(np.float64)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off_diagonal = d2[~np.eye(len(z), dtype=bool)]
    median = float(np.median(off_diagonal))
    if median == 0:  # more than half the pairs identical: fall back to the mean so the kernel is not a delta
        median = float(off_diagonal.mean()) or 1.0
    k = np.exp(-d2 / (2 * median))
    np.fill_diagonal(k, 0.0)  # the unbiased estimate leaves out i == j pairs

    # Column 0 is the observed split; the others are permutations of the labels.
    labels = np.zeros((m + n, permutations + 1))
    labels[:m, 0] = 1
    for j in range(1, permutations + 1):
        labels[rng.permutation(m + n)[:m], j] = 1
    k_labels = k @ labels
    row_sums = k.sum(axis=1)[:, None]
    s_xx = np.sum(labels * k_labels, axis=0)
    s_xy = np.sum((1 - labels) * k_labels, axis=0)
    s_yy = np.sum((1 - labels) * (row_sums - k_labels), axis=0)
    mmd2 = s_xx / (m * (m - 1)) + s_yy / (n * (n - 1)) - 2 * s_xy / (m * n)
    p_value = (1 + np.sum(mmd2[1:] >= mmd2[0])) / (permutations + 1)
    return MMDResult(mmd2=float(mmd2[0]), p_value=float(p_value), bandwidth=math.sqrt(median))


def energy_distance(x, y, seed: int = 0, max_size: int = ENERGY_MAX_SIZE) -> float:
    """Energy distance sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) between the empirical distributions,
    in any dimension. Same convention as ``scipy.stats.energy_distance`` (which is 1-D only), and
    equal to it in 1-D when no subsampling happens. Zero iff the distributions match."""
    rng = stream_rng(seed, "diagnostics", "energy")
    a = subsample(as_matrix(x, "x"), max_size, rng).astype(np.float64)
    b = subsample(as_matrix(y, "y"), max_size, rng).astype(np.float64)
    value = 2 * _mean_distance(a, b) - _mean_distance(a, a) - _mean_distance(b, b)
    return math.sqrt(max(value, 0.0))


def filter_diagnostics(
    target_heldout,
    candidates,
    accepted,
    log_ratio,
    seed: int = 0,
    model: str = "logistic",
) -> dict[str, Any]:
    """The filter's report card (JSON-serializable): acceptance rate, effective sample size, and
    held-out-target-vs-all-candidates and vs-accepted AUC and MMD.

    ``closer_to_target`` is True when the accepted set is harder to tell from the target than all
    candidates are (AUC nearer 0.5).
    """
    candidates = as_matrix(candidates, "candidates")
    accepted = np.asarray(accepted, dtype=bool)
    if accepted.shape != (len(candidates),):
        raise ValueError(f"accepted mask has shape {accepted.shape}, expected ({len(candidates)},)")
    ess = effective_sample_size(log_ratio)
    report: dict[str, Any] = {
        "n_candidates": len(candidates),
        "n_accepted": int(accepted.sum()),
        "acceptance_rate": acceptance_rate(accepted),
        "ess": ess,
        "ess_fraction": ess / len(candidates),
    }
    report.update(sample_comparison(target_heldout, candidates, accepted, seed, model))
    auc_all, auc_acc = report["auc_target_vs_candidates"], report["auc_target_vs_accepted"]
    logger.info(
        "filter diagnostics: accepted %d of %d (%.1f%%), ESS %.0f; held-out target AUC vs all %s, vs accepted %s",
        report["n_accepted"],
        report["n_candidates"],
        100 * report["acceptance_rate"],
        ess,
        _fmt(auc_all),
        _fmt(auc_acc),
    )
    return report


def sample_comparison(
    target_heldout, candidates, accepted, seed: int = 0, model: str = "logistic"
) -> dict[str, Any]:
    """Held-out target vs all candidates and vs the accepted ones: two-sample AUC, MMD^2 and its
    p-value, and ``closer_to_target`` (the accepted set's AUC nearer 0.5). The part of
    :func:`filter_diagnostics` that depends on the space, so it can be measured in several."""
    candidates = as_matrix(candidates, "candidates")
    accepted = np.asarray(accepted, dtype=bool)
    report: dict[str, Any] = {}
    for name, sample in (("candidates", candidates), ("accepted", candidates[accepted])):
        auc = mmd2 = mmd_p = None
        if len(sample) >= 2:
            auc = two_sample_auc(target_heldout, sample, seed=seed, model=model)
            mmd = mmd_test(target_heldout, sample, seed=seed)
            mmd2, mmd_p = mmd.mmd2, mmd.p_value
        else:
            logger.warning("only %d %s: AUC and MMD against the target skipped", len(sample), name)
        report[f"auc_target_vs_{name}"], report[f"mmd2_target_vs_{name}"] = auc, mmd2
        report[f"mmd_p_target_vs_{name}"] = mmd_p
    auc_all, auc_acc = report["auc_target_vs_candidates"], report["auc_target_vs_accepted"]
    report["closer_to_target"] = (
        None if auc_all is None or auc_acc is None else abs(auc_acc - 0.5) < abs(auc_all - 0.5)
    )
    return report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs (a_i, b_j), in row blocks to bound memory."""
    total = sum(float(cdist(a[s : s + _BLOCK], b).sum()) for s in range(0, len(a), _BLOCK))
    return total / (len(a) * len(b))
