"""Density-ratio estimators: log r(x) = log p(x) - log q(x) for each candidate embedding.

p is the target distribution (real target speech), q the proposal (whatever the generators
produced). Everything here is a pure function of numpy arrays, so it is tested without audio.

Three estimators (DESIGN.md, "The filter, precisely"):

* ``classifier``: a probabilistic classifier c(x) = P(target | x) trained on target vs. candidates.
  Bayes' rule gives c/(1-c) = (m_train p(x)) / (n_train q(x)), so
  log r = logit c(x) + log(n_train / m_train), with the *training* counts of the fold that made the
  model (the classifier is trained without class weights, so its odds carry the training prior).
  Cross-fitted: targets and candidates are both split into K folds; the model for fold k is trained
  on the other K-1 folds and scores only fold k, so no candidate is scored by a model that saw it.
* ``gmm``: Gaussian mixtures for p and q, sizes and covariance types chosen by BIC.
* ``gmm_ubm``: a frame-level universal background model with the target model MAP-adapted from it
  (Reynolds, Quatieri & Dunn 2000); the utterance score is the mean frame log-likelihood ratio.

``estimate`` returns a :class:`RatioResult` (log r plus folds, held-out AUC, details);
``estimate_log_ratio`` is the same call returning only the array.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler
from tqdm.auto import tqdm

from core.seeding import stream_rng

logger = logging.getLogger(__name__)

METHODS = ("classifier", "gmm", "gmm_ubm")
MODELS = ("logistic", "quadratic", "mlp", "gbm")

# A held-out AUC above this means the sets barely overlap. For two equal-variance Gaussians an AUC
# of 0.95 is a mean shift of 2.33 standard deviations, where the importance weights of q-samples
# have E_q[r^2] = exp(2.33^2): the effective sample size is under 0.5% of the candidates.
AUC_WARN = 0.95
# Points used to fit PCA and each GMM when there are more: EM and SVD cost grow linearly with the
# points, while 20k points still give >= 1,000 per component at 16 components (BIC picks fewer
# when the data do not support them). Every candidate is still scored.
FIT_MAX = 20_000
# Frames used to fit the UBM: 100k frames at 100 frames/s is about 17 minutes of speech, over 10
# frames per parameter for 64 diagonal components even on 64-d frames.
UBM_FIT_MAX = 100_000
# Rows scored per chunk: bounds the (rows x components x dim) temporaries of GMM scoring.
SCORE_CHUNK = 65_536
# Variance floor on standardized data (0.1% of each feature's pooled variance): near-duplicate
# synthetic candidates would otherwise collapse a component to a point of infinite density.
GMM_REG_COVAR = 1e-3
# Mixture sizes are only tried with at least this many points per free parameter: below it EM is
# ill-conditioned and BIC's large-sample approximation meaningless, and skipping them is what
# keeps a 64-d search affordable (one full-covariance component already has 2,144 parameters).
MIN_POINTS_PER_PARAMETER = 5
# Probabilities from calibrated models (MLP, GBM) are clipped here before the logit, so |logit| <= 27.6:
# beyond that the ratio is infinite for every practical purpose and float rounding decides the rest.
PROB_EPS = 1e-12


@dataclass
class RatioResult:
    """Output of :func:`estimate`.

    ``fold`` is the cross-fitting fold whose model scored each candidate (-1: not cross-fitted).
    ``auc`` is the held-out target-vs-candidates AUC of the cross-fitted classifier (None for the
    GMM methods; use ``diagnostics.two_sample_auc`` on held-out data there). ``target_log_ratio``
    holds the out-of-fold log r of the target points (classifier only), for histograms.
    ``details`` is JSON-serializable: what was fitted and why, for the filter's report.
    """

    log_ratio: np.ndarray
    fold: np.ndarray
    auc: float | None
    details: dict[str, Any] = field(default_factory=dict)
    target_log_ratio: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def estimate(
    target,
    candidates,
    method: str = "classifier",
    folds: int = 5,
    seed: int = 0,
    *,
    model: str = "logistic",
    pca_dim: int = 0,
    max_components: int = 16,
    ubm_components: int = 64,
    relevance: float = 16.0,
    temperature: float = 1.0,
) -> RatioResult:
    """Estimate log r for every candidate.

    ``target`` (m, d) and ``candidates`` (n, d) are embedding matrices (a 1-D array is n points in
    one dimension); for ``gmm_ubm`` they are sequences of per-utterance frame matrices (T_i, d).
    ``pca_dim`` > 0 projects onto that many principal components first (fitted on the targets and
    up to ``FIT_MAX`` candidates, no labels used): fewer dimensions overlap more, which keeps the
    ratios from exploding. ``model`` picks the classifier (``logistic``; ``quadratic`` = logistic
    on degree-2 features, exact for Gaussian p and q, for low dimensions; ``mlp``/``gbm`` with
    Platt calibration). ``max_components`` bounds the BIC search of ``gmm``;
    ``ubm_components``, ``relevance`` and ``temperature`` configure ``gmm_ubm``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown ratio method {method!r}; choose one of {METHODS}")
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (cross-fitting needs a held-out fold), got {folds}")
    if pca_dim < 0:
        raise ValueError(f"pca_dim must be >= 0 (0 disables PCA), got {pca_dim}")
    rng = stream_rng(seed, "ratio.estimate")

    if method == "gmm_ubm":
        t_frames, t_lengths = _as_frame_lists(target, "target")
        c_frames, c_lengths = _as_frame_lists(candidates, "candidates")
        _check_same_dim(t_frames, c_frames)
        t_frames, c_frames, pca_info = _maybe_pca(t_frames, c_frames, pca_dim, rng, seed)
        result = _gmm_ubm(
            t_frames, t_lengths, c_frames, c_lengths, rng, seed, ubm_components, relevance, temperature
        )
    else:
        t = as_matrix(target, "target")
        c = as_matrix(candidates, "candidates")
        _check_same_dim(t, c)
        t, c, pca_info = _maybe_pca(t, c, pca_dim, rng, seed)
        if method == "classifier":
            result = cross_fit_log_ratio(t, c, lambda: make_classifier(model, seed), folds=folds, seed=seed)
            result.details["model"] = model
        else:
            result = _gmm(t, c, rng, seed, max_components)
    result.details.update(method=method, pca=pca_info)
    return result


def estimate_log_ratio(
    target, candidates, method: str, folds: int = 5, seed: int = 0, **options
) -> np.ndarray:
    """log r for each candidate; the array part of :func:`estimate` (same arguments)."""
    return estimate(target, candidates, method, folds=folds, seed=seed, **options).log_ratio


# ---------------------------------------------------------------------------------------------
# Classifier: cross-fitted, prior-corrected logits
# ---------------------------------------------------------------------------------------------
def make_classifier(model: str = "logistic", seed: int = 0, calibrated: bool = True) -> BaseEstimator:
    """An unfitted binary classifier (class 1 = target) whose probabilities are calibrated.

    Logistic regression is calibrated by construction (its maximum-likelihood fit matches the
    predicted and observed class frequencies), so only the MLP and gradient boosting get Platt
    scaling; sigmoid rather than isotonic calibration, because isotonic steps give probabilities
    of exactly 0 or 1 and therefore infinite ratios. No class weights anywhere: the prior
    correction log(n_train/m_train) assumes the classifier's odds carry the training prior.
    Inputs arrive standardized (see :func:`cross_fit_log_ratio`). ``calibrated=False`` skips Platt
    scaling (3x cheaper), for uses that only rank, such as an AUC.
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


def fold_ids(n: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A random fold index in [0, folds) per point, fold sizes differing by at most one."""
    out = np.empty(n, dtype=np.int64)
    out[rng.permutation(n)] = np.arange(n) % folds
    return out


def cross_fit_log_ratio(
    target: np.ndarray,
    candidates: np.ndarray,
    make_model: Callable[[], BaseEstimator],
    folds: int = 5,
    seed: int = 0,
) -> RatioResult:
    """K-fold cross-fitted classifier log ratio.

    Both sets are split into ``folds`` folds; the model for fold k (``make_model()``, a fresh
    unfitted binary classifier with ``predict_proba``, or a logistic regression) is trained on the
    targets and candidates outside fold k and scores the candidates and targets in fold k. The
    prior correction uses that model's own training counts. Inputs are standardized with the
    pooled mean and deviation (no labels involved; the density ratio is invariant to an affine map
    of the inputs).
    """
    m, n = len(target), len(candidates)
    if m < folds or n < folds:
        raise ValueError(
            f"{folds}-fold cross-fitting needs at least {folds} target and candidate points, got {m} targets "
            f"and {n} candidates: lower `folds` or provide more data"
        )
    rng = stream_rng(seed, "ratio.folds")
    t_fold = fold_ids(m, folds, rng)
    c_fold = fold_ids(n, folds, rng)
    dtype = np.result_type(target.dtype, candidates.dtype, np.float32)
    candidates = candidates.astype(dtype, copy=False)
    mean, scale = (v.astype(dtype) for v in _pooled_standardization(target, candidates))

    def standardize(x: np.ndarray) -> np.ndarray:  # in place: x is always a fresh copy or the buffer
        x -= mean
        x /= scale
        return x

    ts = standardize(target.astype(dtype))
    # One training buffer for every fold: allocating a fresh 800k x 64 matrix per fold cost more
    # (page faults, measured 2.5 s CPU for five) than filling a reused one (0.2 s).
    max_train = max(int((t_fold != k).sum() + (c_fold != k).sum()) for k in range(folds))
    x_buf = np.empty((max_train, target.shape[1]), dtype=dtype)
    y_buf = np.empty(max_train, dtype=np.int8)

    log_ratio = np.empty(n, dtype=np.float64)
    target_log_ratio = np.empty(m, dtype=np.float64)
    fold_auc: list[float] = []
    log_prior: list[float] = []
    not_converged = 0
    for k in tqdm(range(folds), desc="cross-fit folds", leave=False):
        t_train, c_train = t_fold != k, np.flatnonzero(c_fold != k)
        m_train, n_train = int(t_train.sum()), len(c_train)
        x, y = x_buf[: m_train + n_train], y_buf[: m_train + n_train]
        x[:m_train] = ts[t_train]
        # mode="clip" writes straight into the buffer ("raise" buffers a copy); the indices are valid.
        np.take(candidates, c_train, axis=0, out=x[m_train:], mode="clip")
        standardize(x[m_train:])
        y[:m_train], y[m_train:] = 1, 0
        clf = make_model()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(x, y)
        not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        correction = math.log(n_train / m_train)
        log_prior.append(correction)
        held_c = np.flatnonzero(c_fold == k)
        for start in range(0, len(held_c), SCORE_CHUNK):
            rows = held_c[start : start + SCORE_CHUNK]
            log_ratio[rows] = _logit(clf, standardize(candidates[rows])) + correction
        held_t = t_fold == k
        target_log_ratio[held_t] = _logit(clf, ts[held_t]) + correction
        labels = np.r_[np.ones(held_t.sum()), np.zeros(len(held_c))]
        scores = np.r_[target_log_ratio[held_t], log_ratio[held_c]]
        fold_auc.append(float(roc_auc_score(labels, scores)))

    auc = float(np.mean(fold_auc))
    details: dict[str, Any] = {
        "folds": folds,
        "n_target": m,
        "n_candidates": n,
        "fold_auc": fold_auc,
        "log_prior_correction": log_prior,
        "folds_not_converged": not_converged,
    }
    if not_converged:
        logger.warning(
            "%d of %d fold models did not converge; their ratios are less reliable", not_converged, folds
        )
    logger.info(
        "classifier cross-fit: held-out AUC %.3f (folds %s)", auc, ", ".join(f"{v:.3f}" for v in fold_auc)
    )
    if auc > AUC_WARN:
        message = (
            f"held-out AUC {auc:.3f} > {AUC_WARN}: target and candidates barely overlap, so the ratios explode and "
            "few candidates will be accepted; try a lower-dimensional embedding (pca_dim, or MFCC statistics instead "
            "of a speaker or encoder embedding) or candidates closer to the target"
        )
        logger.warning(message)
        details["warning"] = message
    return RatioResult(
        log_ratio=log_ratio, fold=c_fold, auc=auc, details=details, target_log_ratio=target_log_ratio
    )


def _logit(clf: BaseEstimator, x: np.ndarray) -> np.ndarray:
    """logit P(target | x). A logistic regression's decision function is that logit exactly;
    other models give probabilities, clipped so the logit stays finite."""
    final = clf[-1] if isinstance(clf, Pipeline) else clf
    if isinstance(final, LogisticRegression):
        return np.asarray(clf.decision_function(x), dtype=np.float64)
    p = np.clip(clf.predict_proba(x)[:, 1].astype(np.float64), PROB_EPS, 1 - PROB_EPS)
    return np.log(p) - np.log1p(-p)


def _pooled_standardization(target: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and deviation of the two sets pooled (float64 accumulators); constant features get scale 1."""
    m, n = len(target), len(candidates)
    mean = (target.sum(axis=0, dtype=np.float64) + candidates.sum(axis=0, dtype=np.float64)) / (m + n)
    sq = ((target - mean) ** 2).sum(axis=0, dtype=np.float64)
    for start in range(0, n, SCORE_CHUNK):
        sq += ((candidates[start : start + SCORE_CHUNK] - mean) ** 2).sum(axis=0, dtype=np.float64)
    scale = np.sqrt(sq / (m + n))
    scale[scale == 0] = 1.0
    return mean, scale


# ---------------------------------------------------------------------------------------------
# GMM: log p_gmm - log q_gmm, mixture sizes by BIC
# ---------------------------------------------------------------------------------------------
def fit_gmm_bic(
    x: np.ndarray,
    seed: int = 0,
    max_components: int = 16,
    covariance_types: Sequence[str] = ("full", "diag"),
) -> tuple[GaussianMixture, list[dict[str, Any]]]:
    """The Gaussian mixture with the lowest BIC over 1, 2, 4, ... ``max_components`` components
    and the given covariance types; returns it and the table of (components, covariance, BIC).

    For each covariance type the search stops at the first size whose BIC is worse than the
    previous one (BIC is close to unimodal in the size), and skips sizes with fewer than
    ``MIN_POINTS_PER_PARAMETER`` points per parameter, except one diagonal Gaussian, which is
    always fitted (the variance floor keeps it proper) so a small target set still gets a density.
    """
    n, d = x.shape
    if n < 2:
        raise ValueError(f"a Gaussian mixture needs at least 2 points, got {n}")
    best: GaussianMixture | None = None
    best_bic = math.inf
    table: list[dict[str, Any]] = []
    for cov in covariance_types:
        previous = math.inf
        k = 1
        while k <= max_components and (
            (k == 1 and cov == "diag") or _gmm_parameters(k, d, cov) * MIN_POINTS_PER_PARAMETER <= n
        ):
            gmm = GaussianMixture(
                k, covariance_type=cov, reg_covar=GMM_REG_COVAR, max_iter=200, random_state=seed
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # reported through `converged` below
                gmm.fit(x)
            bic = float(gmm.bic(x))
            table.append({"components": k, "covariance": cov, "bic": bic, "converged": bool(gmm.converged_)})
            if bic < best_bic:
                best, best_bic = gmm, bic
            if bic >= previous:
                break
            previous = bic
            k *= 2
    if best is None:
        raise ValueError(
            f"no mixture fitted: {n} points are too few for covariance_types={tuple(covariance_types)}; include 'diag'"
        )
    if best.n_components == 1 and best.covariance_type == "diag" and n < MIN_POINTS_PER_PARAMETER * 2 * d:
        logger.warning(
            "only %d points for a %d-dim Gaussian: its density is rough; consider pca_dim to reduce the dimension",
            n,
            d,
        )
    return best, table


def _gmm_parameters(k: int, d: int, cov: str) -> int:
    per_cov = {"full": d * (d + 1) // 2, "diag": d, "spherical": 1}[cov]
    return k * (d + per_cov) + k - 1


def _gmm(
    t: np.ndarray, c: np.ndarray, rng: np.random.Generator, seed: int, max_components: int
) -> RatioResult:
    # Standardizing both sets with the same affine map leaves log p - log q unchanged (the Jacobians
    # cancel) and gives EM well-scaled inputs for the variance floor.
    mean, scale = _pooled_standardization(t, c)
    t = (t - mean) / scale
    t_fit = subsample(t, FIT_MAX, rng)
    c_fit = (subsample(c, FIT_MAX, rng) - mean) / scale
    p_gmm, p_table = fit_gmm_bic(t_fit, seed, max_components)
    q_gmm, q_table = fit_gmm_bic(c_fit, seed, max_components)
    logger.info(
        "gmm: target %d %s components, candidates %d %s components (fitted on %d and %d points)",
        p_gmm.n_components,
        p_gmm.covariance_type,
        q_gmm.n_components,
        q_gmm.covariance_type,
        len(t_fit),
        len(c_fit),
    )
    log_ratio = np.empty(len(c), dtype=np.float64)
    for start in tqdm(range(0, len(c), SCORE_CHUNK), desc="gmm scoring", leave=False):
        chunk = (c[start : start + SCORE_CHUNK] - mean) / scale
        log_ratio[start : start + len(chunk)] = p_gmm.score_samples(chunk) - q_gmm.score_samples(chunk)
    details = {
        "n_target": len(t),
        "n_candidates": len(c),
        "fit_points": {"target": len(t_fit), "candidates": len(c_fit)},
        "target_gmm": {"components": p_gmm.n_components, "covariance": p_gmm.covariance_type, "bic": p_table},
        "candidate_gmm": {
            "components": q_gmm.n_components,
            "covariance": q_gmm.covariance_type,
            "bic": q_table,
        },
        # Not cross-fitted: BIC keeps the mixtures small relative to the points, and the candidate
        # model sees at most FIT_MAX of the candidates, so in-sample optimism is small.
        "cross_fitted": False,
    }
    return RatioResult(
        log_ratio=log_ratio, fold=np.full(len(c), -1, dtype=np.int64), auc=None, details=details
    )


# ---------------------------------------------------------------------------------------------
# GMM-UBM: frame-level background model, MAP-adapted target model
# ---------------------------------------------------------------------------------------------
def map_adapt_means(ubm: GaussianMixture, frames: np.ndarray, relevance: float = 16.0) -> GaussianMixture:
    """A copy of ``ubm`` whose means are MAP-adapted to ``frames`` (Reynolds et al. 2000, eq. 1-4).

    Component i with soft count n_i and frame mean E_i moves to a_i E_i + (1 - a_i) mu_i with
    a_i = n_i / (n_i + relevance): components the target data populate move toward it, the others
    keep the background. Weights and covariances stay (mean-only adaptation, the paper's best
    verification results). ``relevance`` 16 is the paper's value.
    """
    if relevance < 0:
        raise ValueError(f"relevance must be >= 0, got {relevance}")
    resp = ubm.predict_proba(frames)
    counts = resp.sum(axis=0)
    first_moment = resp.T @ frames / np.maximum(counts, np.finfo(float).tiny)[:, None]
    alpha = (counts / np.maximum(counts + relevance, np.finfo(float).tiny))[:, None]
    adapted = GaussianMixture(ubm.n_components, covariance_type=ubm.covariance_type)
    for name in (
        "weights_",
        "covariances_",
        "precisions_",
        "precisions_cholesky_",
        "converged_",
        "n_iter_",
        "lower_bound_",
    ):
        setattr(adapted, name, getattr(ubm, name))
    adapted.means_ = alpha * first_moment + (1 - alpha) * ubm.means_
    adapted.n_features_in_ = ubm.n_features_in_
    return adapted


def _gmm_ubm(
    t_frames: np.ndarray,
    t_lengths: np.ndarray,
    c_frames: np.ndarray,
    c_lengths: np.ndarray,
    rng: np.random.Generator,
    seed: int,
    components: int,
    relevance: float,
    temperature: float,
) -> RatioResult:
    """log r(utterance) = temperature x mean over its frames of log p_target(f) - log p_ubm(f).

    Frames of one utterance are strongly correlated, so summing their log-likelihood ratios
    (the independent-frames likelihood) would be wildly overconfident; the mean is the usual
    GMM-UBM verification score, and ``temperature`` scales it into a log density ratio:
    1.0 counts an utterance as one frame's worth of evidence (flat, conservative ratios);
    raise it toward the number of effectively independent frames per utterance to sharpen.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mean, scale = _pooled_standardization(t_frames, c_frames)
    t_frames = (t_frames - mean) / scale
    c_frames = (c_frames - mean) / scale
    pooled = np.concatenate([t_frames, c_frames])
    fit = subsample(pooled, UBM_FIT_MAX, rng)
    if len(fit) <= components:
        raise ValueError(
            f"{len(fit)} frames cannot fit a {components}-component UBM: lower ubm_components or provide more frames"
        )
    # Diagonal covariances: the standard GMM-UBM choice; many diagonal components model correlations.
    ubm = GaussianMixture(
        components, covariance_type="diag", reg_covar=GMM_REG_COVAR, max_iter=200, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported in details
        ubm.fit(fit)
    target_model = map_adapt_means(ubm, t_frames, relevance)
    frame_llr = np.empty(len(c_frames), dtype=np.float64)
    for start in tqdm(range(0, len(c_frames), SCORE_CHUNK), desc="gmm-ubm scoring", leave=False):
        chunk = c_frames[start : start + SCORE_CHUNK]
        frame_llr[start : start + len(chunk)] = target_model.score_samples(chunk) - ubm.score_samples(chunk)
    offsets = np.r_[0, np.cumsum(c_lengths)[:-1]]
    mean_llr = np.add.reduceat(frame_llr, offsets) / c_lengths
    logger.info(
        "gmm_ubm: %d-component UBM on %d frames, target adapted on %d frames; mean frame LLR %.3f",
        components,
        len(fit),
        len(t_frames),
        float(mean_llr.mean()),
    )
    details = {
        "n_target": len(t_lengths),
        "n_candidates": len(c_lengths),
        "ubm_components": components,
        "ubm_fit_frames": len(fit),
        "ubm_converged": bool(ubm.converged_),
        "target_frames": len(t_frames),
        "relevance": relevance,
        "temperature": temperature,
        "cross_fitted": False,
    }
    return RatioResult(
        log_ratio=temperature * mean_llr,
        fold=np.full(len(c_lengths), -1, dtype=np.int64),
        auc=None,
        details=details,
    )


# ---------------------------------------------------------------------------------------------
# Input handling, PCA, subsampling
# ---------------------------------------------------------------------------------------------
def as_matrix(x, name: str) -> np.ndarray:
    """A finite, non-empty (points, dims) float matrix; a 1-D array is points in one dimension.
    Float32 input stays float32 (half the memory and time at 1M rows)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty (points, dims) matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(
            f"{name} has {bad} rows with NaN or infinite values: fix or drop those embeddings first"
        )
    return x


def _as_frame_lists(utterances, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Stacked frames and per-utterance frame counts from a sequence of (frames, dims) matrices."""
    if isinstance(utterances, np.ndarray) and utterances.ndim == 2:
        raise ValueError(f"gmm_ubm needs {name} as a list of per-utterance frame matrices, got one matrix")
    mats = [as_matrix(u, f"{name}[{i}]") for i, u in enumerate(utterances)]
    if not mats:
        raise ValueError(f"{name} holds no utterances")
    dims = {m.shape[1] for m in mats}
    if len(dims) != 1:
        raise ValueError(f"{name} utterances have different frame dimensions {sorted(dims)}")
    return np.concatenate(mats), np.array([len(m) for m in mats], dtype=np.int64)


def _check_same_dim(t: np.ndarray, c: np.ndarray) -> None:
    if t.shape[1] != c.shape[1]:
        raise ValueError(
            f"target has {t.shape[1]}-dim and candidates {c.shape[1]}-dim embeddings: embed both with the same embedder"
        )


def subsample(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` rows of ``x``, drawn without replacement, in their original order."""
    if len(x) <= limit:
        return x
    return x[np.sort(rng.choice(len(x), size=limit, replace=False))]


def _maybe_pca(
    t: np.ndarray, c: np.ndarray, dim: int, rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
    """Project both sets onto ``dim`` principal components of the targets plus up to FIT_MAX
    candidates (both sets represented, so directions that separate them are kept)."""
    if dim == 0:
        return t, c, None
    if dim >= t.shape[1]:
        raise ValueError(f"pca_dim={dim} must be smaller than the embedding dimension {t.shape[1]}")
    pca = PCA(dim, random_state=seed).fit(np.concatenate([t, subsample(c, FIT_MAX, rng)]))
    explained = float(pca.explained_variance_ratio_.sum())
    logger.info("PCA to %d dimensions keeps %.1f%% of the variance", dim, 100 * explained)

    def project(x: np.ndarray) -> np.ndarray:
        # Chunked: PCA.transform works in float64, and a 1M-row float64 temporary is 0.5 GB at 64 dims.
        chunks = [
            pca.transform(x[s : s + SCORE_CHUNK]).astype(x.dtype) for s in range(0, len(x), SCORE_CHUNK)
        ]
        return np.concatenate(chunks)

    return project(t), project(c), {"dim": dim, "explained_variance": explained}
