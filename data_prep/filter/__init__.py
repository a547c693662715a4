"""The rejection-sampling filter: embed target and candidates, estimate r(x) = p(x)/q(x), sample.

embed.py (audio -> vectors, cached), ratio.py (estimators), sample.py (accept with min(1, r/M)),
diagnostics.py (is the accepted set closer to the target?), stage.py (``python -m data_prep.filter``).
"""
