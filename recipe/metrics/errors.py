"""Edit-distance arithmetic for WER/CER and the bootstrap intervals around them.

Pure functions of strings and arrays. Per-utterance counts are kept (not just the corpus rate)
because every confidence interval here resamples utterances, and corpus WER is a ratio of sums,
not a mean of per-utterance rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import jiwer
import numpy as np


@dataclass(frozen=True)
class ErrorCounts:
    """Per-utterance counts; ``errors = substitutions + deletions + insertions``."""

    substitutions: np.ndarray
    deletions: np.ndarray
    insertions: np.ndarray
    hits: np.ndarray

    @property
    def errors(self) -> np.ndarray:
        return self.substitutions + self.deletions + self.insertions

    @property
    def ref_len(self) -> np.ndarray:
        return self.substitutions + self.deletions + self.hits

    def rate(self) -> float:
        return corpus_rate(self.errors, self.ref_len)

    def totals(self) -> dict[str, int]:
        return {
            "substitutions": int(self.substitutions.sum()),
            "deletions": int(self.deletions.sum()),
            "insertions": int(self.insertions.sum()),
            "hits": int(self.hits.sum()),
        }


def corpus_rate(errors: np.ndarray, ref_len: np.ndarray) -> float:
    """Errors summed over reference units summed; an empty reference set with errors counts as 1."""
    n = float(np.sum(ref_len))
    e = float(np.sum(errors))
    if n == 0:
        return float(e > 0)
    return e / n


def error_counts(references: list[str], hypotheses: list[str], unit: str = "word") -> ErrorCounts:
    """Levenshtein alignment counts per utterance, in words or characters (spaces included)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    n = len(references)
    counts = {k: np.zeros(n, dtype=np.int64) for k in ("substitute", "delete", "insert", "equal")}
    # jiwer rejects empty references; they can only hold insertions (every hypothesis unit).
    nonempty = [i for i, r in enumerate(references) if r.strip()]
    for i in set(range(n)) - set(nonempty):
        counts["insert"][i] = len(hypotheses[i].split()) if unit == "word" else len(hypotheses[i])
    if nonempty:
        process = jiwer.process_words if unit == "word" else jiwer.process_characters
        out = process([references[i] for i in nonempty], [hypotheses[i] for i in nonempty])
        for i, chunks in zip(nonempty, out.alignments, strict=True):
            for c in chunks:
                span = (
                    c.ref_end_idx - c.ref_start_idx if c.type != "insert" else c.hyp_end_idx - c.hyp_start_idx
                )
                counts[c.type][i] += span
    return ErrorCounts(counts["substitute"], counts["delete"], counts["insert"], counts["equal"])


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
