"""Word error rate as an `evaluate` module shipped with the recipe.

`evaluate.load("wer")` fetches a script from the Hub and fails offline; this file is loaded by
absolute path instead (`recipe.metrics.load_metric("wer")`).
"""

# evaluate picks the first Metric class in this module's namespace, so import the module, not the base class.
from recipe.metrics import base


class WER(base.ErrorRateMetric):
    unit = "word"
    key = "wer"
