"""Character error rate (spaces count) as an `evaluate` module shipped with the recipe.

Loaded by absolute path (`recipe.metrics.load_metric("cer")`) so it works offline.
"""

# evaluate picks the first Metric class in this module's namespace, so import the module, not the base class.
from recipe.metrics import base


class CER(base.ErrorRateMetric):
    unit = "char"
    key = "cer"
