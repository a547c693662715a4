"""The rejection-sampling filter: embed target and candidates, estimate r(x) = p(x)/q(x), sample.

embed/ (audio -> vectors: one embedder a module, plus the on-disk cache), estimators/ (the ratio
estimators by name: one a module, each with its options), features.py and classifiers.py (numeric
helpers and classifiers the estimators and the diagnostics share), sample.py (accept with
min(1, r/M)), diagnostics.py (is the accepted set closer to the target?), groups.py and figures.py
(the report per generator, voice and perturbation), args.py and stage.py (``python -m data_prep.filter``).
"""
