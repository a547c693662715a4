"""`gmm_ubm`: a frame-level universal background model with the target model MAP-adapted from it
(Reynolds, Quatieri & Dunn 2000); an utterance's score is its mean frame log-likelihood ratio,
turned into a log density ratio by cross-fitted logistic calibration on a spline of that score."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import SplineTransformer

from core.config import arg
from data_prep.filter.classifiers import SearchedLogistic, logit
from data_prep.filter.estimators.base import Estimator, Groups, RatioResult
from data_prep.filter.estimators.crossfit import Folds, FoldSplit, cross_fit
from data_prep.filter.estimators.gmm import GMM_REG_COVAR
from data_prep.filter.features import SCORE_CHUNK, frame_inputs, pooled_standardization, subsample

logger = logging.getLogger(__name__)

# Frames used to fit the UBM: 100k frames at 100 frames/s is about 17 minutes of speech, over 10
# frames per parameter for 64 diagonal components even on 64-d frames.
UBM_FIT_MAX = 100_000
CALIBRATIONS = ("spline", "temperature")
# Knots of the calibration spline, at quantiles of the scores: a cubic spline with 5 knots (7
# coefficients) bends where the mean frame LLR saturates or steepens in the tails (on 1-D frames
# it is S-shaped in the utterance mean: a linear Platt map misplaced M by nats there).
SPLINE_KNOTS = 5


@dataclass
class GMMUBMOptions:
    ubm_components: int = arg(64, "gmm_ubm: components of the universal background model.", ge=1)
    relevance: float = arg(
        16.0,
        "gmm_ubm: MAP relevance factor; a component moves toward the target once its soft frame count nears it (Reynolds et al. 2000).",
        gt=0,
    )
    ubm_calibration: str = arg(
        "spline",
        "gmm_ubm: how the mean frame log-likelihood ratio s becomes log r. spline: log r = g(s) + log(n/m), g a cubic "
        "spline fitted by logistic regression of target vs candidates on out-of-fold scores (Platt scaling with a "
        "flexible map: a log ratio, so every policy means what it says); temperature: log r = temperature x s (an "
        "uncalibrated score).",
        choices=list(CALIBRATIONS),
    )
    temperature: float = arg(
        1.0,
        "gmm_ubm with ubm_calibration temperature: multiplies the mean frame log-likelihood ratio to give log r.",
        gt=0,  # 0 would make every ratio 1, a negative one would invert them
    )


class GMMUBM(Estimator):
    """Frames of one utterance are strongly correlated, so summing their log-likelihood ratios (the
    independent-frames likelihood) would be wildly overconfident; the mean is the usual GMM-UBM
    verification score s. It ranks utterances but is no log ratio: a logistic calibration (default)
    maps it to one, cross-fitted twice over: the UBM and target model of fold k never saw fold k's
    utterances, and the calibration of fold k is fitted on the other folds' out-of-fold scores.
    """

    name = "gmm_ubm"
    summary = "frame-level UBM with a MAP-adapted target model, calibrated to a log ratio"
    Options = GMMUBMOptions
    frames = True

    def fit_score(self, target, candidates, groups=None, seed: int = 0) -> RatioResult:
        opts = self.options
        if opts.ubm_calibration not in CALIBRATIONS:
            raise ValueError(f"ubm_calibration must be one of {CALIBRATIONS}, got {opts.ubm_calibration!r}")
        if opts.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {opts.temperature}")
        rng = self.rng(seed)
        t_frames, t_lengths, c_frames, c_lengths, pca, project = frame_inputs(
            target, candidates, self.pca_dim, rng, seed
        )
        mean, scale = pooled_standardization(t_frames, c_frames)
        t_frames, c_frames = (t_frames - mean) / scale, (c_frames - mean) / scale
        # The utterance each frame belongs to, to pick a fold's frames with one mask.
        t_owner, c_owner = (
            np.repeat(np.arange(len(t_lengths)), t_lengths),
            np.repeat(np.arange(len(c_lengths)), c_lengths),
        )
        m, n = len(t_lengths), len(c_lengths)
        folds = Folds.make(m, n, self.folds, Groups.coerce(groups, m, n), seed)

        def fit_fold(split: FoldSplit) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
            t_fit = t_frames[np.isin(t_owner, split.t_train)]
            pooled = np.concatenate([t_fit, c_frames[np.isin(c_owner, split.c_train)]])
            fit = subsample(pooled, UBM_FIT_MAX, rng)
            if len(fit) <= opts.ubm_components:
                raise ValueError(
                    f"{len(fit)} frames cannot fit a {opts.ubm_components}-component UBM: lower ubm_components or "
                    "provide more frames"
                )
            # Diagonal covariances: the standard GMM-UBM choice; many diagonal components model correlations.
            ubm = GaussianMixture(opts.ubm_components, covariance_type="diag", reg_covar=GMM_REG_COVAR, max_iter=200,
                                  random_state=seed)  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # reported in details
                ubm.fit(fit)
            adapted = map_adapt_means(ubm, t_fit, opts.relevance)
            t_score = mean_frame_llr(ubm, adapted, t_frames, t_owner, t_lengths, split.t_held)
            c_score = mean_frame_llr(ubm, adapted, c_frames, c_owner, c_lengths, split.c_held)
            info = {
                "ubm_fit_frames": len(fit),
                "ubm_converged": bool(ubm.converged_),
                "target_frames": len(t_fit),
            }
            return t_score, c_score, info

        calibrate = spline_log_ratio if opts.ubm_calibration == "spline" else _temperature(opts.temperature)
        result = cross_fit(folds, fit_fold, "gmm-ubm cross-fit", calibrate)
        result.details.update(
            ubm_components=opts.ubm_components, relevance=opts.relevance, calibration_method=opts.ubm_calibration,
            temperature=opts.temperature, method=self.name, pca=pca,
        )  # fmt: skip
        result.space = project
        return result


def mean_frame_llr(ubm, adapted, frames, owner, lengths, utterances: np.ndarray) -> np.ndarray:
    """The mean over each of ``utterances``' frames of log p_adapted(f) - log p_ubm(f)."""
    if len(utterances) == 0:
        return np.empty(0)
    picked = frames[np.isin(owner, utterances)]
    llr = np.empty(len(picked))
    for start in range(0, len(picked), SCORE_CHUNK):
        chunk = picked[start : start + SCORE_CHUNK]
        llr[start : start + len(chunk)] = adapted.score_samples(chunk) - ubm.score_samples(chunk)
    counts = lengths[utterances]  # `utterances` is sorted, as are the picked frames
    return np.add.reduceat(llr, np.r_[0, np.cumsum(counts)[:-1]]) / counts


def spline_log_ratio(folds: Folds, t_score: np.ndarray, c_score: np.ndarray):
    """log r = g(s) + log(n_k / m_k) for the points of fold k, g a cubic spline of the score (linear
    beyond the outer knots) fitted by logistic regression of target vs candidates on the
    out-of-fold scores of the *other* folds, its L2 strength chosen by cross-validated log-loss
    (n_k, m_k their counts: the prior correction, as for the classifier)."""
    t_score, c_score = t_score.copy(), c_score.copy()
    for k in range(folds.count):  # each fold's UBM scores on its own scale: put them on q's
        t_in, c_in = folds.target == k, folds.candidates == k
        if c_in.sum() >= 2:
            center, spread = np.mean(c_score[c_in]), np.std(c_score[c_in]) or 1.0
            t_score[t_in], c_score[c_in] = (
                (t_score[t_in] - center) / spread,
                (c_score[c_in] - center) / spread,
            )
    t_lr, c_lr = np.empty_like(t_score), np.empty_like(c_score)
    strengths = []
    for k in range(folds.count):
        t_in, c_in = folds.target == k, folds.candidates == k
        s = np.r_[t_score[~t_in], c_score[~c_in]][:, None]
        y = np.r_[np.ones((~t_in).sum()), np.zeros((~c_in).sum())]
        spline = SplineTransformer(n_knots=SPLINE_KNOTS, knots="quantile", extrapolation="linear")
        fit = make_pipeline(spline, SearchedLogistic(directions=(0,))).fit(s, y)
        correction = math.log((~c_in).sum() / (~t_in).sum())
        t_lr[t_in] = logit(fit, t_score[t_in, None]) + correction
        c_lr[c_in] = logit(fit, c_score[c_in, None]) + correction
        strengths.append(fit[-1].C_)
    return t_lr, c_lr, {"method": "spline", "C": strengths}


def _temperature(temperature: float):
    def scale(folds: Folds, t_score: np.ndarray, c_score: np.ndarray):
        return (
            temperature * t_score,
            temperature * c_score,
            {"method": "temperature", "temperature": temperature},
        )

    return scale


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
