"""The embedder interface (audio batch -> vectors, plus frame-level features) and the input checks
and model-file helpers the embedders share."""

from __future__ import annotations

import abc
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import schema
from core.ranks import local_device

SAMPLE_RATE = schema.SAMPLE_RATE
# Bump when the features an embedder computes change, so old caches are not reused.
CACHE_VERSION = 1


class Embedder(abc.ABC):
    """Maps a batch of 16 kHz mono float32 arrays to an ``[B, dim]`` matrix.

    ``options`` holds every argument that changes the output (it feeds the cache key);
    ``init_options`` additionally holds those that do not (device), so a worker process can rebuild
    the same embedder with ``type(embedder)(**init_options)``.
    """

    name: str = ""
    dim: int = 0
    frame_dim: int = 0

    def __init__(self, **init_options: Any) -> None:
        self.init_options = dict(init_options)
        self.options = {k: v for k, v in init_options.items() if k != "device"}
        # Per-embedder counts of fallbacks (e.g. "VAD found no speech"), logged by the dataset loops.
        self.counters: Counter[str] = Counter()

    @abc.abstractmethod
    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """``[len(batch), dim]`` float32 embeddings of 1-D 16 kHz float32 arrays."""

    def frames(self, samples: np.ndarray) -> np.ndarray:
        """Frame-level features ``[T, frame_dim]`` of one utterance (for the GMM-UBM estimator)."""
        return self.frames_batch([samples])[0]

    def frames_batch(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise ValueError(
            f"embedder {self.name!r} with options {self.options} has no frame-level features; "
            "use mfcc_stats or encoder for the gmm_ubm estimator"
        )

    def signature(self) -> dict[str, Any]:
        """Extra cache-key material: the identity of model files (a retrained model invalidates the cache)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What the cache key hashes, also stored beside the cache as ``embedder.json``."""
        return {
            "name": self.name,
            "options": self.options,
            "signature": self.signature(),
            "version": CACHE_VERSION,
        }

    @property
    def key(self) -> str:
        material = json.dumps(self.describe(), sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha1(material.encode()).hexdigest()[:12]}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, options={self.options})"


def check_batch(batch: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Validate and convert a batch; a bad item fails loudly with its position."""
    out = []
    for i, x in enumerate(batch):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(
                f"item {i} of the batch has shape {x.shape}; embedders take 1-D mono 16 kHz arrays"
            )
        if len(x) == 0:
            raise ValueError(f"item {i} of the batch is empty; drop zero-length utterances before embedding")
        if not np.isfinite(x).all():
            raise ValueError(f"item {i} of the batch holds NaN or inf samples; fix or drop that utterance")
        out.append(torch.from_numpy(x))
    return out


def resolve_device(device: str) -> torch.device:
    """``auto``: this process's own GPU (cuda:LOCAL_RANK under a launcher), else the CPU."""
    return torch.device(local_device() if device == "auto" else device)


def files_signature(path: str) -> dict[str, Any]:
    """Size and mtime of a model folder's weight and config files; a Hub id is its own signature."""
    folder = Path(path)
    if not folder.is_dir():
        return {"hub_id": path}
    paths = sorted(p for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".bin", ".pt"})
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}


def padded_inputs(feature_extractor, batch: Sequence[np.ndarray]) -> list[tuple[list[int], dict]]:
    """Feature-extractor inputs, batched when the model takes an attention mask, else one per utterance.

    Models without attention-mask support (Wav2Vec2 base: group-norm feature encoder) must not see
    padding (HF's advice: pad with zeros and pass no mask; but the zeros then change the group-norm
    statistics, so an utterance's vector would depend on its batch). They run one utterance at a time.
    """
    arrays = [np.asarray(x, np.float32) for x in batch]
    groups = (
        [list(range(len(arrays)))]
        if feature_extractor.return_attention_mask
        else [[i] for i in range(len(arrays))]
    )
    out = []
    for group in groups:
        inputs = feature_extractor(
            [arrays[i] for i in group],
            sampling_rate=SAMPLE_RATE,
            padding=True,
            return_attention_mask=feature_extractor.return_attention_mask,
            return_tensors="pt",
        )
        out.append((group, dict(inputs)))
    return out
