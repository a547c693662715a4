"""Embedders: 16 kHz audio -> one vector per utterance (and frame-level features), batched and cached.

The filter compares candidates with target speech in an embedding space; which space decides what
"closer to the target" means. Three families, one a module, chosen by name with :func:`get_embedder`:

- ``mfcc_stats`` (mfcc.py, default, no weights): MFCC statistics over speech frames with pitch and
  speaking rate (dsp.py holds the packed-frame math and the pitch tracker). Channel, bandwidth,
  timbre and prosody.
- ``speaker`` (speaker.py): speaker identity. resemblyzer's GE2E d-vectors (``pip install .[speaker]``),
  or any transformers ``AutoModelForAudioXVector`` by Hub id or folder.
- ``encoder`` (encoder.py): mean-pooled hidden states of an ASR encoder (Whisper or Wav2Vec2-style).

:func:`embed_dataset` and :func:`frame_features_dataset` (cache.py) run one over a canonical dataset
and cache the result under ``cache_dir/<embedder key>/``; the key hashes the embedder's name,
options and model files. Under a launcher each process embeds its share with :func:`embed_share`
and one joins them.
"""

from __future__ import annotations

import inspect
from typing import Any

from data_prep.filter.embed.base import Embedder
from data_prep.filter.embed.cache import embed_dataset, embed_share, frame_features_dataset
from data_prep.filter.embed.encoder import AsrEncoder
from data_prep.filter.embed.mfcc import MfccStats
from data_prep.filter.embed.speaker import Resemblyzer, XVector

__all__ = ["EMBEDDERS", "Embedder", "embed_dataset", "embed_share", "frame_features_dataset", "get_embedder"]

EMBEDDERS = ("mfcc_stats", "speaker", "encoder")


def _embedder_class(name: str, options: dict[str, Any]) -> type[Embedder]:
    if name == "speaker":
        return Resemblyzer if options.get("model", "resemblyzer") == "resemblyzer" else XVector
    return {"mfcc_stats": MfccStats, "encoder": AsrEncoder}[name]


def get_embedder(name: str = "mfcc_stats", **options: Any) -> Embedder:
    """Build an embedder by name; ``options`` are the keyword arguments of its class (see each docstring).

    ``speaker`` is resemblyzer unless ``model=`` names an x-vector model (Hub id or folder).
    """
    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}; choose one of {list(EMBEDDERS)}")
    cls = _embedder_class(name, options)
    valid = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"embedder {name!r} ({cls.__name__}) has no option(s) {unknown}; valid options: {valid}"
        )
    return cls(**options)
