"""Bootstrap intervals around corpus WER/CER and the paired comparison of two systems.

Per-utterance edit counts come from ``core.asr.errors``; every interval here resamples utterances.
"""

from __future__ import annotations

import numpy as np

from core.asr.errors import corpus_rate


def bootstrap_ci(
    errors: np.ndarray, ref_len: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap interval of the corpus rate, resampling utterances with replacement."""
    errors, ref_len = np.asarray(errors, float), np.asarray(ref_len, float)
    n = len(errors)
    if n == 0:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    rates = errors[idx].sum(1) / np.maximum(ref_len[idx].sum(1), 1)
    lo, hi = np.quantile(rates, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_bootstrap(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    ref_len: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Compare systems A and B decoded on the same utterances (Koehn 2004, Bisani & Ney 2004).

    Each resample draws utterances once and scores both systems on that draw, so the interval is
    on the *difference* and per-utterance difficulty cancels. ``delta = rate_b - rate_a``: negative
    means B is better. ``p_improvement`` is the share of resamples where B beats A, and
    ``p_value`` the two-sided bootstrap p-value of ``delta == 0``.
    """
    ea, eb, n_ref = (np.asarray(x, float) for x in (errors_a, errors_b, ref_len))
    if not (len(ea) == len(eb) == len(n_ref)):
        raise ValueError("paired comparison needs the same utterances for both systems")
    n = len(ea)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    denom = np.maximum(n_ref[idx].sum(1), 1)
    deltas = (eb[idx].sum(1) - ea[idx].sum(1)) / denom
    lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    better, worse = float(np.mean(deltas < 0)), float(np.mean(deltas > 0))
    return {
        "rate_a": corpus_rate(ea, n_ref),
        "rate_b": corpus_rate(eb, n_ref),
        "delta": corpus_rate(eb, n_ref) - corpus_rate(ea, n_ref),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_improvement": better,
        "p_value": float(
            min(1.0, 2 * min(better + 0.5 * np.mean(deltas == 0), worse + 0.5 * np.mean(deltas == 0)))
        ),
        "n_utterances": n,
        "n_boot": n_boot,
    }


def format_p(p_value: float, n_boot: int) -> str:
    """A bootstrap p-value as text: below its resolution (2 / n_boot, two-sided) it is a bound, not 0."""
    floor = 2 / n_boot
    return f"< {floor:.2g}" if p_value < floor else f"{p_value:.3f}"
