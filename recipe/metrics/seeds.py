"""Statistics of systems trained with several seeds and decoded on one test set: a hierarchical
bootstrap over seeds and utterances, and Welch's t-test on per-seed rates.

Two sources of variance separate two fine-tuning recipes: which test utterances were drawn, and
which training run (seed: data draws, filter draws, initialisation order) produced the model. An
utterance bootstrap of errors pooled over seeds sees only the first, and on a few seeds that
disagree it reports differences as significant that the next seed overturns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def _mean_rates(errors: np.ndarray, utt_counts: np.ndarray, ref_sums: np.ndarray, rng) -> np.ndarray:
    """Per resample: the mean over a with-replacement draw of the runs (rows of ``errors``) of each
    run's corpus rate on that resample's utterances (``utt_counts``: multiplicities)."""
    n_runs = len(errors)
    seed_weights = rng.multinomial(n_runs, np.full(n_runs, 1 / n_runs), size=len(utt_counts)) / n_runs
    per_run = utt_counts @ errors.T  # [resamples, runs]: errors of each run on the drawn utterances
    return (seed_weights * per_run).sum(1) / np.maximum(ref_sums, 1)


def hierarchical_bootstrap(
    errors: Sequence[np.ndarray], ref_len: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> np.ndarray:
    """Resampled mean rates, ``[systems, n_boot]``, of systems given as ``[runs, utterances]`` errors.

    Each resample draws the runs (seeds) of every system with replacement, independently per
    system (runs of different systems share a seed number, not a model), then the utterances with
    replacement. The utterance draw is one per resample, shared by every run and every system:
    all of them decoded the same test utterances, so differences stay paired (an utterance's
    difficulty cancels) and the test set's sampling error does not shrink with more seeds, as it
    would with a separate utterance draw per seed. A system's rate in a resample is the mean of its
    drawn runs' corpus rates, as its reported WER is the mean over its seeds.
    """
    ref_len = np.asarray(ref_len, dtype=np.float64)
    n = len(ref_len)
    rng = np.random.default_rng(seed)
    utt_counts = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(np.float64)
    ref_sums = utt_counts @ ref_len
    return np.stack(
        [_mean_rates(np.atleast_2d(np.asarray(e, np.float64)), utt_counts, ref_sums, rng) for e in errors]
    )


def percentile_ci(samples: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def welch_test(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Welch's t-test of mean(x) == mean(y) on per-seed rates, two-sided.

    t = (mean x - mean y) / sqrt(s_x^2 / n_x + s_y^2 / n_y) with Welch-Satterthwaite degrees of
    freedom. A sample of one run (a deterministic system such as the zero-shot decode) counts as
    a constant: its variance term is 0, which reduces the test to a one-sample t-test of the other
    against that value. Too few runs to estimate any variance give NaN.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    terms = [a.var(ddof=1) / len(a) if len(a) > 1 else 0.0 for a in (x, y)]
    dofs = [len(a) - 1 for a in (x, y)]
    se2 = sum(terms)
    if se2 <= 0 or all(d == 0 for d in dofs):
        return {"t": float("nan"), "df": float("nan"), "p_value": float("nan")}
    t = (x.mean() - y.mean()) / np.sqrt(se2)
    df = se2**2 / sum(v**2 / d for v, d in zip(terms, dofs, strict=True) if d > 0)
    return {"t": float(t), "df": float(df), "p_value": float(2 * stats.t.sf(abs(t), df))}


def format_welch_p(p_value: float) -> str:
    if np.isnan(p_value):
        return "n/a"
    return "< 0.001" if p_value < 0.001 else f"{p_value:.3f}"
