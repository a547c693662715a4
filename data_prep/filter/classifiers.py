"""The probabilistic classifiers that tell target from candidates, shared by the `classifier` ratio
estimator and the diagnostics' two-sample AUC."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

MODELS = ("logistic", "quadratic", "mlp", "gbm")
# Probabilities from calibrated models (MLP, GBM) are clipped here before the logit, so |logit| <= 27.6:
# beyond that the ratio is infinite for every practical purpose and float rounding decides the rest.
PROB_EPS = 1e-12


def make_classifier(model: str = "logistic", seed: int = 0, calibrated: bool = True) -> BaseEstimator:
    """An unfitted binary classifier (class 1 = target) whose probabilities are calibrated.

    Logistic regression is calibrated by construction (its maximum-likelihood fit matches the
    predicted and observed class frequencies), so only the MLP and gradient boosting get Platt
    scaling; sigmoid rather than isotonic calibration, because isotonic steps give probabilities
    of exactly 0 or 1 and therefore infinite ratios. No class weights anywhere: the prior
    correction log(n_train/m_train) assumes the classifier's odds carry the training prior.
    Inputs arrive standardized. ``calibrated=False`` skips Platt scaling (3x cheaper), for uses
    that only rank, such as an AUC.
    """
    # lbfgs on standardized inputs converges in tens of iterations even at 1M rows; 300 is headroom.
    if model == "logistic":
        return LogisticRegression(max_iter=300)
    if model == "quadratic":
        # log p/q of two Gaussians is a quadratic form: degree-2 features make logistic regression
        # exact for them. d(d+3)/2 features, so use it after PCA to a few dimensions.
        return make_pipeline(
            PolynomialFeatures(2, include_bias=False), StandardScaler(), LogisticRegression(max_iter=300)
        )
    if model == "mlp":
        base = MLPClassifier(hidden_layer_sizes=(64,), early_stopping=True, random_state=seed, max_iter=200)
    elif model == "gbm":
        base = HistGradientBoostingClassifier(random_state=seed)
    else:
        raise ValueError(f"unknown classifier model {model!r}; choose one of {MODELS}")
    # cv=3: three calibration folds keep 2/3 of the data for each underlying fit.
    return CalibratedClassifierCV(base, method="sigmoid", cv=3) if calibrated else base


def logit(clf: BaseEstimator, x: np.ndarray) -> np.ndarray:
    """logit P(target | x). A logistic regression's decision function is that logit exactly;
    other models give probabilities, clipped so the logit stays finite."""
    final = clf[-1] if isinstance(clf, Pipeline) else clf
    if isinstance(final, LogisticRegression):
        return np.asarray(clf.decision_function(x), dtype=np.float64)
    p = np.clip(clf.predict_proba(x)[:, 1].astype(np.float64), PROB_EPS, 1 - PROB_EPS)
    return np.log(p) - np.log1p(-p)
