"""Rejection sampling and importance weights from log density ratios.

A candidate x with ratio r(x) = p(x)/q(x) is accepted with probability min(1, r(x)/M), with one
seeded uniform draw per candidate: stochastic acceptance, never top-k, so the accepted set keeps
the diversity of p instead of piling onto its mode. The bound M comes from a policy:

* ``max``: M = max r over the candidates, guarded against the winner's curse (below). Exact
  rejection sampling when the estimated ratio is the true one (the accepted points are draws from
  p), acceptance rate about 1/M.
* ``quantile:q``: M = the q-quantile of r (quasi-rejection sampling): candidates above it are all
  kept, so more are accepted; the accepted set is closer to p than q is, but no longer exact.
* ``budget:N``: M solved so the expected number accepted, sum_i min(1, r_i/M), equals N.
* ``per_group:k`` (grouped only, below): M solved per group like ``budget``, k per group.

Grouped sampling (``filter.group_by: text``): the candidates are split into groups (all renderings
of one normalized text) and rejection sampling runs within each group with its own M from the same
policy. If acoustics and text are independent under both p and q, r(x) is the same function
inside every group and ``max`` per group is exact for p(x | text): the accepted renderings of each
text are draws from the target's acoustics, while every text keeps its place. ``budget:N`` gives
group g the share N n_g / n of the budget (n_g: its candidates with a nonzero ratio), so each
text's share of the accepted set is its share of the pool (the text mix the plan chose) and only
the choice of renderings changes; ``per_group:k`` gives every text the same k instead (a group with
at most k candidates keeps them all). Every group with a nonzero ratio keeps at least one: when its
draws accept none, one candidate is drawn in proportion to r within the group (importance
resampling: p(x | text) restricted to its renderings), so a text is never lost for want of a
target-like rendering. With more groups than N, ``budget:N`` therefore accepts about one per group.

The winner's curse: the largest of n noisy log ratios overshoots the true maximum by about
sigma sqrt(2 log n) (3.7 sigma at n = 1,000), so M = max r rejects nearly everything because of
one lucky estimate. ``max`` therefore lowers M to the smallest bound that truncates at most
``max_truncation`` of the ratio mass: sum_i max(0, r_i - M) <= eps sum_i r_i. Truncating moves the
accepted distribution, min(r, M) q / Z, by at most eps in total variation from the one M = max r
gives (the trade-off: a bias of at most eps against an acceptance rate no longer set by the single
most overestimated candidate). Near a smooth maximum of r the top candidates' ratios barely
differ, so exact ratios lose little. Measured on p = N(0, 0.5^2) inside q = N(0.3, 1.2^2) (plus
seven N(0, 1) dimensions in 8-D), 3,000 targets, 5,000 candidates, five draws: with the exact ratio
eps = 1% accepted 4% more at an unchanged energy distance to p (1-D 0.0188 -> 0.0189, 8-D 0.053);
with the estimated ratio in 8-D, M = max r accepted 936 (the exact ratio 1,998) at distance 0.073,
eps = 0.1% 1,373 at 0.061, eps = 1% 1,803 at 0.051.

When the estimator has no skill (its cross-fitted log-loss is not significantly better than no
ratio at all), ``uniform`` replaces the probabilities by their mean: every candidate equally
likely, with the expected count the policy would have given, instead of amplifying noise.

Everything runs in log space: ratios of real embeddings span hundreds of nats and overflow exp.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from core.seeding import stream_rng

logger = logging.getLogger(__name__)

POLICIES = ("max", "quantile:q", "budget:N", "per_group:k")
# filter.group_by: `none`, one sample over all candidates; `text`, one per normalized text.
GROUP_BY = ("none", "text")
# The `max` policy's truncation bound eps: at most 1% of the accepted distribution's mass moved (in
# total variation). With exact ratios that cost nothing measurable; with estimated ones in 8-D it
# nearly doubled the accepted set back to the exact ratio's size (figures in the docstring above).
MAX_TRUNCATION = 0.01
# Default cap of an importance weight, in units of the mean weight. Since every weight is then
# at most `clip` times the mean, the effective sample size (sum w)^2 / sum w^2 is at least n/clip:
# no single utterance can dominate the weighted loss. 10 keeps >= 10% of the candidates' worth
# of samples while still letting the ratio reorder them by a factor of up to 10.
DEFAULT_CLIP = 10.0


def parse_policy(policy: str) -> tuple[str, float | None]:
    """``"max"`` -> ("max", None); ``"quantile:0.9"`` -> ("quantile", 0.9); ``"budget:5000"`` -> ("budget", 5000);
    ``"per_group:3"`` -> ("per_group", 3)."""
    kind, _, value = policy.strip().partition(":")
    if kind == "max" and not value:
        return "max", None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if kind == "quantile" and 0 < number <= 1:
        return "quantile", number
    if kind in ("budget", "per_group") and number >= 1 and number == int(number):
        return kind, number
    raise ValueError(
        f"bad sampling policy {policy!r}: use `max`, `quantile:q` with 0 < q <= 1, `budget:N` with an integer "
        "N >= 1, or `per_group:k` with an integer k >= 1 (with group_by: text)"
    )


def check_grouping(policy: str, group_by: str) -> None:
    """Raise ValueError when ``policy`` and ``group_by`` do not go together: ``per_group:k`` needs groups."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    if parse_policy(policy)[0] == "per_group" and group_by == "none":
        raise ValueError(
            f"policy {policy} accepts about k candidates per group, but group_by is none (no groups): set "
            "group_by: text, or use budget:N for a total count"
        )


def accept_probabilities(
    log_ratio, policy: str = "max", *, max_truncation: float = MAX_TRUNCATION, uniform: bool = False
) -> tuple[np.ndarray, float]:
    """Acceptance probability min(1, r/M) of every candidate, and log M.

    Candidates with log r = -inf (ratio zero) get probability 0; NaN or +inf is an error.
    ``max_truncation`` is the `max` policy's guard (0: M = max r). ``uniform``: the mean of those
    probabilities for every candidate (the no-skill fallback).
    """
    lr = _check_log_ratio(log_ratio)
    kind, value = parse_policy(policy)
    if kind == "per_group":
        raise ValueError(f"policy {policy} needs groups: use the grouped sampler (group_by: text)")
    log_m = _log_m(lr, kind, value, max_truncation)
    prob = np.exp(np.minimum(lr - log_m, 0.0))
    if uniform:
        prob = np.full(len(prob), prob.mean())
    return prob, log_m


def _log_m(lr: np.ndarray, kind: str, value: float | None, max_truncation: float) -> float:
    """log M of one set of log ratios (at least one finite) under ``kind``; a budget may be fractional."""
    finite = lr[np.isfinite(lr)]
    if kind == "max":
        return _guarded_max_log_m(finite, max_truncation)
    if kind == "quantile":
        # "higher" picks an actual log ratio (no interpolation with -inf); q = 1 is the max policy.
        log_m = float(np.quantile(lr, value, method="higher"))
        if not np.isfinite(log_m):
            raise ValueError(f"the {value} quantile of the ratios is 0 (too many -inf log ratios): raise q")
        return log_m
    return _budget_log_m(finite, value)


def rejection_sample(
    log_ratio,
    policy: str = "max",
    seed: int = 0,
    *,
    max_truncation: float = MAX_TRUNCATION,
    uniform: bool = False,
) -> np.ndarray:
    """Boolean mask of accepted candidates: u_i < min(1, r_i/M) with u_i ~ U(0,1) drawn from ``seed``
    (through :func:`stream_rng`, so not the stream ``default_rng(seed)`` gives elsewhere).

    One draw per candidate in input order, so the same seed and the same candidates accept the
    same ones, and a candidate's fate does not depend on how many others there are after it.
    ``max_truncation`` and ``uniform`` as in :func:`accept_probabilities`.
    """
    prob, log_m = accept_probabilities(log_ratio, policy, max_truncation=max_truncation, uniform=uniform)
    accepted = stream_rng(seed, "filter", "accept").random(len(prob)) < prob
    logger.info(
        "rejection sampling (%s%s, log M = %.3f): accepted %d of %d candidates (%.1f%%), expected %.1f",
        policy,
        ", uniform fallback" if uniform else "",
        log_m,
        int(accepted.sum()),
        len(prob),
        100 * accepted.mean(),
        float(prob.sum()),
    )
    return accepted


@dataclass
class GroupedSample:
    """The outcome of :func:`rejection_sample_by_group`: per candidate and per group."""

    accepted: np.ndarray  # bool, per candidate
    prob: np.ndarray  # acceptance probability min(1, r / M_g) (the fallback draw not included)
    names: np.ndarray  # group labels, sorted
    log_m: np.ndarray  # log M of each group; NaN for a group whose ratios are all zero
    n_candidates: np.ndarray  # per group
    n_accepted: np.ndarray  # per group, the fallback's one included
    fallback: np.ndarray  # bool per group: its one accepted came from the fallback draw

    def summary(self, examples: int = 5) -> dict:
        """Counts for the filter report: groups kept, groups that needed the fallback (and a few names)."""
        has_ratio = np.isfinite(self.log_m)
        return {
            "n_groups": len(self.names),
            "groups_with_accepted": int((self.n_accepted > 0).sum()),
            "groups_without_nonzero_ratio": int((~has_ratio).sum()),
            "fallback_groups": int(self.fallback.sum()),
            "fallback_examples": [str(g) for g in self.names[self.fallback][:examples]],
            "accepted_per_group_min_median_max": _spread(self.n_accepted),
            "candidates_per_group_min_median_max": _spread(self.n_candidates),
            "log_M_min_median_max": _spread(self.log_m[has_ratio]),
        }


def _spread(x: np.ndarray) -> list[float] | None:
    return [float(v) for v in np.percentile(x, [0, 50, 100])] if len(x) else None


def accept_probabilities_by_group(
    log_ratio, groups, policy: str = "max", *, max_truncation: float = MAX_TRUNCATION, uniform: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Acceptance probability min(1, r/M_g) of every candidate, with M_g from ``policy`` within its group.

    Returns (prob, names, member, log_m): the sorted group labels, each candidate's index into
    them and each group's log M (NaN where every ratio in the group is zero: nothing to accept).
    ``max`` and ``quantile:q`` apply within each group; ``budget:N`` solves group g for
    N n_g / n (n_g, n: candidates with a nonzero ratio in g, in all); ``per_group:k`` for
    min(k, n_g). ``uniform``: each group's mean probability for all its members (the no-skill
    fallback, the expected count per group the policy gave).
    """
    lr = _check_log_ratio(log_ratio)
    groups = np.asarray(groups)
    if groups.shape != lr.shape:
        raise ValueError(f"{len(groups)} group labels for {len(lr)} log ratios")
    kind, value = parse_policy(policy)
    names, member = np.unique(groups, return_inverse=True)
    finite = np.isfinite(lr)
    n_finite = np.bincount(member, weights=finite, minlength=len(names))
    if kind == "budget" and value > n_finite.sum():
        raise ValueError(
            f"budget:{int(value)} exceeds the {int(n_finite.sum())} candidates with nonzero ratio: lower the budget"
        )
    prob = np.zeros(len(lr))
    log_m = np.full(len(names), np.nan)
    for g, ix in enumerate(_members(member, len(names))):
        if n_finite[g] == 0:
            continue  # every ratio zero: acceptance probability 0, nothing to solve
        if kind == "budget":
            share = value * n_finite[g] / n_finite.sum()
            log_m[g] = _log_m(lr[ix], "budget", min(share, n_finite[g]), max_truncation)
        elif kind == "per_group":
            log_m[g] = _log_m(lr[ix], "budget", min(value, n_finite[g]), max_truncation)
        else:
            try:
                log_m[g] = _log_m(lr[ix], kind, value, max_truncation)
            except ValueError as err:
                raise ValueError(f"group {names[g]!r}: {err}") from None
        prob[ix] = np.exp(np.minimum(lr[ix] - log_m[g], 0.0))
        if uniform:
            prob[ix] = prob[ix].mean()
    return prob, names, member, log_m


def rejection_sample_by_group(
    log_ratio,
    groups,
    policy: str = "max",
    seed: int = 0,
    *,
    max_truncation: float = MAX_TRUNCATION,
    uniform: bool = False,
) -> GroupedSample:
    """Rejection sampling within each group (:func:`accept_probabilities_by_group`), at least one
    accepted in every group with a nonzero ratio.

    Each group draws from its own stream, ``stream_rng(seed, "filter", "accept", label)``, one
    uniform per member in input order: a group's accepted set depends on the seed and on its own
    candidates only, not on which other groups exist. A group whose draws accept none gets one
    candidate drawn in proportion to r among its members with a nonzero ratio (uniformly with
    ``uniform``: the ratios are noise then), from ``stream_rng(seed, "filter", "fallback", label)``.
    """
    lr = _check_log_ratio(log_ratio)
    prob, names, member, log_m = accept_probabilities_by_group(
        lr, groups, policy, max_truncation=max_truncation, uniform=uniform
    )
    accepted = np.zeros(len(lr), dtype=bool)
    fallback = np.zeros(len(names), dtype=bool)
    n_candidates = np.zeros(len(names), dtype=np.int64)
    for g, ix in enumerate(_members(member, len(names))):
        n_candidates[g] = len(ix)
        label = str(names[g])
        accepted[ix] = stream_rng(seed, "filter", "accept", label).random(len(ix)) < prob[ix]
        if accepted[ix].any() or np.isnan(log_m[g]):
            continue
        live = ix[np.isfinite(lr[ix])]
        w = np.ones(len(live)) if uniform else np.exp(lr[live] - lr[live].max())
        accepted[stream_rng(seed, "filter", "fallback", label).choice(live, p=w / w.sum())] = True
        fallback[g] = True
    n_accepted = np.bincount(member, weights=accepted, minlength=len(names)).astype(np.int64)
    out = GroupedSample(accepted, prob, names, log_m, n_candidates, n_accepted, fallback)
    logger.info(
        "grouped rejection sampling (%s%s, %d groups): accepted %d of %d candidates (%.1f%%), expected %.1f "
        "before the fallback; %d groups kept one by the fallback draw, %d have no nonzero ratio (none kept)",
        policy, ", uniform fallback" if uniform else "", len(names), int(accepted.sum()), len(lr),
        100 * accepted.mean(), float(prob.sum()), int(fallback.sum()), int(np.isnan(log_m).sum()),
    )  # fmt: skip
    return out


def _members(member: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Indices of each group's candidates, in input order (a stable sort keeps it)."""
    order = np.argsort(member, kind="stable")
    return np.split(order, np.cumsum(np.bincount(member, minlength=n_groups))[:-1])


def importance_weights(log_ratio, clip: float = DEFAULT_CLIP) -> np.ndarray:
    """Importance weights r normalized to mean 1, with no weight above ``clip`` times the mean.

    Plain clipping followed by renormalization would push the largest weights back above ``clip``
    (the mean drops after clipping); instead the cap t is solved so that min(w, t) / mean(min(w, t))
    peaks at exactly ``clip``. The result has mean 1, keeps the order of the ratios, and has an
    effective sample size of at least n / clip. ``clip = inf`` gives the raw normalized ratios.
    """
    lr = _check_log_ratio(log_ratio)
    if not clip >= 1:
        raise ValueError(f"clip must be >= 1 (it caps a weight at clip x the mean weight), got {clip}")
    w = np.exp(lr - lr.max())
    w /= w.mean()
    n = len(w)
    if w.max() <= clip:
        return w
    # With the j largest weights capped at t: t = clip * mean(min(w, t)) = clip * (j t + S_j) / n,
    # where S_j is the sum of the uncapped weights, so t = clip S_j / (n - clip j). The right j has
    # t between the (j+1)-th and the j-th largest weight.
    s = np.sort(w)[::-1]
    rest = np.r_[np.cumsum(s[::-1])[::-1], 0.0]  # rest[j] = sum of s[j:]
    j = np.arange(1, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = clip * rest[j] / (n - clip * j)
    valid = (n - clip * j > 0) & (t >= s[j]) & (t <= s[j - 1])
    if not valid.any():  # every weight capped: only possible when clip == 1
        return np.ones(n)
    cap = t[np.argmax(valid)]
    w = np.minimum(w, cap)
    return w / w.mean()


def _guarded_max_log_m(lr: np.ndarray, eps: float) -> float:
    """The smallest log M with sum_i max(0, r_i - M) <= eps sum_i r_i (eps = 0: max log r).

    With the ratios sorted in decreasing order s_0 >= s_1 >= ..., the excess at M = s_j is
    sum_{i<j} s_i - j s_j, nondecreasing in j; for the last j within the bound, M lies in
    [s_{j+1}, s_j] where the excess (j + 1 of them above M) is linear in M and solved exactly.
    """
    if not 0 <= eps < 1:
        raise ValueError(f"max_truncation must be in [0, 1), got {eps}")
    top = float(lr.max())
    if eps == 0:
        return top
    s = np.sort(np.exp(lr - top))[::-1]  # r / max r, so the largest is 1
    cum = np.cumsum(s)
    bound = eps * cum[-1]
    excess = (cum - s) - np.arange(len(s)) * s  # excess at M = s_j
    j = int(np.searchsorted(excess, bound, side="right")) - 1
    m = (cum[j] - bound) / (j + 1)
    m = min(max(m, s[j + 1] if j + 1 < len(s) else 0.0), s[j])
    return top + math.log(m) if m > 0 else top


def _budget_log_m(lr: np.ndarray, budget: float) -> float:
    """log M with sum_i min(1, exp(lr_i - log M)) = budget, exactly (no iteration). The budget may
    be fractional (a group's share of ``budget:N``).

    With the ratios sorted in decreasing order s_1 >= s_2 >= ..., if the k largest are capped at
    probability 1 the expected count is k + exp(L_k - log M), with L_k = logsumexp(s_{k+1}, ...),
    so log M = L_k - log(budget - k). The expected count at log M = s_k is increasing in k; the
    right k is the last one whose count at s_k does not exceed the budget.
    """
    n = len(lr)
    if budget > n:
        raise ValueError(f"budget:{budget:g} exceeds the {n} candidates with nonzero ratio: lower the budget")
    if budget == n:
        return float(lr.min())
    s = np.sort(lr)[::-1]
    tail = np.r_[np.logaddexp.accumulate(s[::-1])[::-1], -np.inf]  # tail[k] = logsumexp(s[k:])
    # Expected count with log M = s[k]: the k+1 largest (indices 0..k) capped, the rest below.
    count_at = np.arange(1, n + 1) + np.exp(tail[1:] - s)
    k = int(np.searchsorted(count_at, budget, side="right")) - 1  # last k with count_at[k] <= budget
    if k < 0:  # even the largest ratio is below M: nothing capped
        return float(tail[0] - math.log(budget))
    capped = k + 1
    log_m = float(tail[capped] - math.log(budget - capped)) if budget > capped else float(s[k])
    # Rounding can leave log M a hair outside [s[k+1], s[k]], the interval the formula assumes.
    return float(np.clip(log_m, s[capped] if capped < n else -np.inf, s[k]))


def _check_log_ratio(log_ratio) -> np.ndarray:
    lr = np.asarray(log_ratio, dtype=np.float64)
    if lr.ndim != 1 or len(lr) == 0:
        raise ValueError(f"log ratios must be a non-empty 1-D array, got shape {lr.shape}")
    if np.isnan(lr).any() or np.isposinf(lr).any():
        bad = int((np.isnan(lr) | np.isposinf(lr)).sum())
        raise ValueError(f"{bad} log ratios are NaN or +inf: the ratio estimator failed on those candidates")
    if not np.isfinite(lr).any():
        raise ValueError("every log ratio is -inf: no candidate has positive density under the target")
    return lr
