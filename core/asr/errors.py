"""Edit-distance arithmetic for WER/CER: per-utterance counts and corpus rates.

Pure functions of strings and arrays, shared by evaluation (whose intervals resample utterances,
so counts are kept per utterance: corpus WER is a ratio of sums, not a mean of rates) and the
candidates' intelligibility gate (a CER per candidate).
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
