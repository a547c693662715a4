"""The probabilistic classifiers that tell target from candidates, shared by the `classifier` ratio
estimator and the diagnostics' two-sample AUC."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.covariance import LedoitWolf
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import check_cv
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

MODELS = ("quadratic", "logistic", "mlp", "gbm")
# Probabilities from calibrated models (MLP, GBM) are clipped here before the logit, so |logit| <= 27.6:
# beyond that the ratio is infinite for every practical purpose and float rounding decides the rest.
PROB_EPS = 1e-12
# Inverse regularization strengths tried by cross-validation, half a decade apart, on
# standardized features: 1e-4 flattens the ratio to a constant for a few hundred rows (the
# prior-only model), 100 leaves a 100k-row fit effectively unregularized. A decade apart was too
# coarse: on 64 targets in 81-d two folds jumped from C = 0.01 to 0.1 and their log r spread from
# 0.6 to 1.6 nats (the true 1.0), and that one fold's maximum then set M for everybody.
CS = np.logspace(-4, 2, 13)
# Folds of that cross-validation (and of the Platt calibration of `mlp`/`gbm`) when the caller
# gives no splits: each fit keeps 2/3 of the rows.
INNER_FOLDS = 3
# The C path stops once the validation loss has risen this many steps in a row (a decade past
# its minimum): the loss is unimodal in log C on every fit we ran, and the weakly regularized
# end is where lbfgs needs the most iterations (this halved the 1M-candidate bench).
PATIENCE = 2
# Directions whose pairwise products `quadratic` adds: 8 give 36 products, the full quadratic
# form for embeddings of up to 8 dimensions (exact for Gaussian p and q); above, the 8 along which
# the target's spread differs most from the candidates'. 36 + 64 features keep a 1M x 64-d
# cross-fit under a minute (bench/filter_speed.py).
QUADRATIC_DIRECTIONS = 8


class QuadraticFeatures(TransformerMixin, BaseEstimator):
    """[x, products of the coordinates of x along ``directions`` directions], fitted on labelled rows
    (1 = target, 0 = candidate).

    For Gaussian p and q, log r = -1/2 x'(S_p^-1 - S_q^-1) x + linear: in coordinates whitened by
    the candidates' covariance the quadratic form is diagonal in the eigenvectors of the target's
    (whitened) covariance, and its eigenvalues lambda say how much narrower (< 1) or wider (> 1)
    the target is. So the directions kept are those with the largest |log lambda|; the target's
    covariance is Ledoit-Wolf shrunk, because a few dozen targets in 81 dimensions give a singular
    sample covariance whose null directions would look infinitely narrow. With d <= directions
    every direction is kept and the products span all degree-2 monomials.
    """

    def __init__(self, directions: int = QUADRATIC_DIRECTIONS):
        self.directions = directions

    def fit(self, x, y):
        x, is_target = np.asarray(x, dtype=np.float64), np.asarray(y) == 1
        d = x.shape[1]
        self.center_ = x[~is_target].mean(axis=0)
        if self.directions == 0:  # linear terms only: the search's fallback when products do not help
            self.basis_ = np.zeros((d, 0))
        elif d <= self.directions:
            self.basis_ = np.eye(d)
        else:
            # Whiten by the candidates' covariance (eigenvalues floored: a constant feature would
            # divide by zero), then the target's shrunk covariance in that frame.
            evals, evecs = np.linalg.eigh(np.cov(x[~is_target], rowvar=False))
            whiten = evecs / np.sqrt(np.maximum(evals, 1e-6 * evals.max()))
            shrunk = LedoitWolf().fit((x[is_target] - self.center_) @ whiten).covariance_
            lam, u = np.linalg.eigh(shrunk)
            keep = np.argsort(-np.abs(np.log(np.maximum(lam, 1e-12))))[: self.directions]
            self.basis_ = whiten @ u[:, keep]
        k = self.basis_.shape[1]
        self.pairs_ = np.triu_indices(k)
        return self

    def transform(self, x):
        z = (np.asarray(x, dtype=np.float64) - self.center_) @ self.basis_
        return np.hstack([x, z[:, self.pairs_[0]] * z[:, self.pairs_[1]]])


class SearchedLogistic(ClassifierMixin, BaseEstimator):
    """Logistic regression on :class:`QuadraticFeatures` whose number of quadratic ``directions``
    and L2 strength C are chosen by cross-validated log-loss over ``cv`` (a fold count or
    (train, test) splits), then refitted on every row.

    The quadratic directions are chosen with the labels, so the features are refitted inside every
    validation fold: chosen once on all rows, they would also describe the validation targets, and
    the search would keep C = 1 for features that fit only the training targets (measured on 64-d
    with 80 targets: out-of-fold log r 5 nats too low). The C path runs from strong to weak
    regularization, each fit warm-started from the previous one, and stops PATIENCE steps past the
    validation minimum. ``directions`` 0 is the linear
    model, so the search falls back to it where the products do not pay for their variance.
    """

    def __init__(self, directions=(0, QUADRATIC_DIRECTIONS), cs=tuple(CS), cv=INNER_FOLDS):
        self.directions, self.cs, self.cv = directions, cs, cv

    def fit(self, x, y):
        x, y = np.asarray(x), np.asarray(y)
        directions, cs, cv = tuple(self.directions), tuple(self.cs), self.cv
        if isinstance(cv, int):  # a fold count: no more folds than the rarer class has rows
            cv = min(cv, int(np.bincount(y.astype(np.int64), minlength=2).min()))
        if isinstance(cv, int) and cv < 2:
            # One row of a class (a tiny diagnostics fold): nothing to validate on; linear, C = 1.
            directions, cs, splits = directions[:1], (1.0,), []
        else:
            splits = list(check_cv(cv, y, classifier=True).split(x, y))
        loss = np.full((len(directions), len(cs)), np.inf)
        for i, k in enumerate(directions):
            folds = []
            for train, val in splits:
                features = make_pipeline(QuadraticFeatures(k), StandardScaler()).fit(x[train], y[train])
                # lbfgs converged within 300 iterations on every standardized fit we ran.
                fit = LogisticRegression(max_iter=300, warm_start=True)
                folds.append(
                    (features.transform(x[train]), y[train], features.transform(x[val]), y[val], fit)
                )
            worse = 0
            for j, c in enumerate(cs):
                loss[i, j] = sum(
                    log_loss(y_val, fit.set_params(C=c).fit(x_train, y_train).predict_proba(x_val), labels=[0, 1],
                             normalize=False)
                    for x_train, y_train, x_val, y_val, fit in folds
                )  # fmt: skip
                worse = worse + 1 if loss[i, j] > loss[i, :j].min(initial=np.inf) else 0
                if worse == PATIENCE:  # past the optimum: weaker penalties only cost (slower) fits
                    break
        i, j = np.unravel_index(np.argmin(loss), loss.shape)
        self.directions_, self.C_ = int(directions[i]), float(cs[j])
        self.pipeline_ = make_pipeline(
            QuadraticFeatures(self.directions_), StandardScaler(), LogisticRegression(C=self.C_, max_iter=300)
        ).fit(x, y)
        self.classes_ = self.pipeline_.classes_
        return self

    def decision_function(self, x):
        return self.pipeline_.decision_function(x)

    def predict_proba(self, x):
        return self.pipeline_.predict_proba(x)


def make_classifier(
    model: str = "quadratic", seed: int = 0, calibrated: bool = True, cv=INNER_FOLDS
) -> BaseEstimator:
    """An unfitted binary classifier (class 1 = target) whose probabilities are calibrated.

    ``quadratic`` and ``logistic`` are :class:`SearchedLogistic`, with and without the option of
    quadratic terms (the linear logit is an exponential tilt of q: it cannot express a target
    narrower than the candidates); their L2 strength is chosen by cross-validated log-loss over
    ``cv`` (a fold count or (train, test) splits: pass grouped ones so near-copies do not reward
    memorization), since a fixed strength is too weak for 32 targets in 81-d and needlessly
    strong for 5,000. A maximum-likelihood logistic fit is calibrated by construction; the MLP
    and gradient boosting get Platt scaling over the same ``cv``, sigmoid rather than isotonic
    because isotonic steps give probabilities of exactly 0 or 1 and therefore infinite ratios. No
    class weights anywhere: the prior correction log(n_train/m_train) assumes the classifier's
    odds carry the training prior. Inputs arrive standardized. ``calibrated=False`` skips Platt
    scaling (3x cheaper), for uses that only rank, such as an AUC.
    """
    if model == "quadratic":
        return SearchedLogistic(cv=cv)
    if model == "logistic":
        return SearchedLogistic(directions=(0,), cv=cv)
    if model == "mlp":
        base = MLPClassifier(hidden_layer_sizes=(64,), early_stopping=True, random_state=seed, max_iter=200)
    elif model == "gbm":
        base = HistGradientBoostingClassifier(random_state=seed)
    else:
        raise ValueError(f"unknown classifier model {model!r}; choose one of {MODELS}")
    return CalibratedClassifierCV(base, method="sigmoid", cv=cv) if calibrated else base


def chosen(clf: BaseEstimator) -> dict[str, float] | None:
    """What the search chose, for the report (None: not a searched logistic regression)."""
    if isinstance(clf, SearchedLogistic):
        return {"C": clf.C_, "quadratic_directions": clf.directions_}
    return None


def logit(clf: BaseEstimator, x: np.ndarray) -> np.ndarray:
    """logit P(target | x). A logistic regression's decision function is that logit exactly;
    other models give probabilities, clipped so the logit stays finite."""
    if isinstance(clf[-1] if isinstance(clf, Pipeline) else clf, (SearchedLogistic, LogisticRegression)):
        return np.asarray(clf.decision_function(x), dtype=np.float64)
    p = np.clip(clf.predict_proba(x)[:, 1].astype(np.float64), PROB_EPS, 1 - PROB_EPS)
    return np.log(p) - np.log1p(-p)
