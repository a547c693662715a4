"""Numeric helpers shared by the ratio estimators and the diagnostics: input checks, subsampling,
pooled standardization and PCA. Pure numpy/scikit-learn, no audio."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Points used to fit PCA and each GMM when there are more: EM and SVD cost grow linearly with the
# points, while 20k points still give >= 1,000 per component at 16 components (BIC picks fewer
# when the data do not support them). Every candidate is still scored.
FIT_MAX = 20_000
# Rows scored per chunk: bounds the (rows x components x dim) temporaries of GMM scoring.
SCORE_CHUNK = 65_536


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


def frame_stack(utterances, name: str) -> tuple[np.ndarray, np.ndarray]:
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


def check_same_dim(t: np.ndarray, c: np.ndarray) -> None:
    if t.shape[1] != c.shape[1]:
        raise ValueError(
            f"target has {t.shape[1]}-dim and candidates {c.shape[1]}-dim embeddings: embed both with the same embedder"
        )


def subsample(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` rows of ``x``, drawn without replacement, in their original order."""
    if len(x) <= limit:
        return x
    return x[np.sort(rng.choice(len(x), size=limit, replace=False))]


def pooled_standardization(target: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and deviation of the two sets pooled (float64 accumulators); constant features get scale 1."""
    m, n = len(target), len(candidates)
    mean = (target.sum(axis=0, dtype=np.float64) + candidates.sum(axis=0, dtype=np.float64)) / (m + n)
    sq = ((target - mean) ** 2).sum(axis=0, dtype=np.float64)
    for start in range(0, n, SCORE_CHUNK):
        sq += ((candidates[start : start + SCORE_CHUNK] - mean) ** 2).sum(axis=0, dtype=np.float64)
    scale = np.sqrt(sq / (m + n))
    scale[scale == 0] = 1.0
    return mean, scale


def maybe_pca(
    t: np.ndarray, c: np.ndarray, dim: int, rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None, Callable[[np.ndarray], np.ndarray] | None]:
    """Project both sets onto ``dim`` principal components of the two sets weighted equally.

    On the pooled rows, where candidates are 92-99.7% of the data, the components follow the
    candidates' variance and a target that differs only along a low-variance direction loses all
    its signal; balanced, the between-set difference counts as much as either set's spread.
    Returns the projected sets, the PCA info and the projection (0: unchanged, None, None).
    """
    if dim < 0:
        raise ValueError(f"pca_dim must be >= 0 (0 disables PCA), got {dim}")
    if dim == 0:
        return t, c, None, None
    if dim >= t.shape[1]:
        raise ValueError(f"pca_dim={dim} must be smaller than the embedding dimension {t.shape[1]}")
    # The covariance of the half-half mixture of the two sets: each set's own spread plus the
    # between-set difference, from every target and up to FIT_MAX candidates (rather than a
    # balanced subsample, which would keep only as many candidates as there are targets).
    t_fit, c_fit = (
        subsample(t, FIT_MAX, rng).astype(np.float64),
        subsample(c, FIT_MAX, rng).astype(np.float64),
    )
    t_mean, c_mean = t_fit.mean(axis=0), c_fit.mean(axis=0)
    between = np.outer(t_mean - c_mean, t_mean - c_mean)
    spread = [np.atleast_2d(np.cov(x, rowvar=False, bias=True)) for x in (t_fit, c_fit)]
    evals, evecs = np.linalg.eigh(0.5 * (spread[0] + spread[1]) + 0.25 * between)
    basis, center = evecs[:, ::-1][:, :dim], 0.5 * (t_mean + c_mean)
    explained = float(evals[::-1][:dim].sum() / max(evals.sum(), np.finfo(float).tiny))
    logger.info("PCA to %d dimensions keeps %.1f%% of the balanced variance", dim, 100 * explained)

    def project(x: np.ndarray) -> np.ndarray:
        # Chunked: the product is float64, and a 1M-row float64 temporary is 0.5 GB at 64 dims.
        chunks = [
            ((x[s : s + SCORE_CHUNK] - center) @ basis).astype(x.dtype) for s in range(0, len(x), SCORE_CHUNK)
        ]
        return np.concatenate(chunks)

    info = {
        "dim": dim,
        "explained_variance": explained,
        "fitted_on": "balanced mixture of targets and candidates",
    }
    return project(t), project(c), info, project


def embedding_inputs(
    target, candidates, pca_dim: int, rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None, Callable[[np.ndarray], np.ndarray] | None]:
    """Checked (points, dims) matrices of both sets, projected by :func:`maybe_pca`, the PCA info
    and the projection."""
    t, c = as_matrix(target, "target"), as_matrix(candidates, "candidates")
    check_same_dim(t, c)
    return maybe_pca(t, c, pca_dim, rng, seed)


def frame_inputs(
    target, candidates, pca_dim: int, rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any] | None, Callable | None]:
    """Stacked frames and frame counts of both sets of utterances, projected by :func:`maybe_pca`:
    (target frames, target counts, candidate frames, candidate counts, PCA info, projection)."""
    t, t_lengths = frame_stack(target, "target")
    c, c_lengths = frame_stack(candidates, "candidates")
    check_same_dim(t, c)
    t, c, pca, project = maybe_pca(t, c, pca_dim, rng, seed)
    return t, t_lengths, c, c_lengths, pca, project
