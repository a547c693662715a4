"""The shared body of the WER and CER `evaluate` modules (they differ only in the unit)."""

import datasets
import evaluate

from core.asr.errors import error_counts

_KWARGS = """
Args:
    predictions: hypothesis strings.
    references: reference strings (an empty reference contributes only insertions).
    return_counts: also return substitutions, deletions, insertions and hits.
Returns:
    the corpus-level rate: errors summed over utterances / reference units summed.
"""


class ErrorRateMetric(evaluate.Metric):
    unit = "word"  # "word" or "char"
    key = "wer"

    def _info(self):
        return evaluate.MetricInfo(
            description=f"{self.key.upper()}: corpus-level {self.unit} error rate computed with jiwer.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, return_counts=False):
        counts = error_counts(references, predictions, unit=self.unit)
        return {self.key: counts.rate(), **(counts.totals() if return_counts else {})}
