"""The canonical utterance schema every stage reads and writes, and the audio codec around it.

Every dataset the recipe writes has one row per utterance with the columns in ``COLUMNS``.
Audio is stored as 16 kHz mono 16-bit WAV bytes inside the dataset, so a saved dataset is
self-contained and stages can be rerun from it alone.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from datasets import Audio, DatasetDict, Features, Value, load_from_disk

SAMPLE_RATE = 16_000
ORIGINS = ("real", "perturbed", "synthetic")
COLUMNS = ("id", "audio", "text", "speaker", "accent", "origin", "parent_id", "generator", "duration")
# Columns the filter stage adds to every scored candidate, with their `datasets` dtypes.
FILTER_COLUMNS = {
    "log_ratio": "float64",  # estimated log p_target(x) - log q_candidates(x)
    "accept_prob": "float64",  # min(1, r / M)
    "accepted": "bool",  # the seeded draw u < accept_prob
    "fold": "int32",  # cross-fitting fold whose model scored the row
    "weight": "float64",  # importance weight (mode: weights), clipped
    "sample_group": "string",  # the group sampled within: normalized text (group_by: text), else ""
}


def features():
    """`datasets.Features` of the canonical schema."""
    return Features(
        {
            "id": Value("string"),
            "audio": Audio(sampling_rate=SAMPLE_RATE),
            "text": Value("string"),
            "speaker": Value("string"),
            "accent": Value("string"),
            "origin": Value("string"),
            "parent_id": Value("string"),
            "generator": Value("string"),
            "duration": Value("float32"),
        }
    )


def encode_wav(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV bytes; samples are clipped to [-1, 1] (PCM cannot hold more)."""
    buf = io.BytesIO()
    sf.write(
        buf,
        np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0),
        sample_rate,
        format="WAV",
        subtype="PCM_16",
    )
    return buf.getvalue()


def decode_audio(value: Any) -> np.ndarray:
    """Float32 mono samples at 16 kHz from a canonical ``audio`` cell.

    Accepts the undecoded form (``{"bytes": ..., "path": ...}``, what ``Audio(decode=False)`` gives),
    a decoded dict with ``array``, or a torchcodec ``AudioDecoder`` (datasets >= 4 decodes to that).
    Our own datasets are always 16 kHz mono, so no resampling happens here.
    """
    if isinstance(value, dict):
        if value.get("array") is not None:
            return np.asarray(value["array"], dtype=np.float32)
        data = value.get("bytes")
        source = io.BytesIO(data) if data is not None else value["path"]
        samples, rate = sf.read(source, dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(f"expected {SAMPLE_RATE} Hz audio in a canonical dataset, got {rate} Hz")
        return samples.mean(axis=1)
    samples = value.get_all_samples()
    return samples.data.mean(dim=0).numpy().astype(np.float32)


def make_row(
    *,
    id: str,
    samples: np.ndarray,
    text: str,
    speaker: str = "",
    accent: str = "",
    origin: str = "real",
    parent_id: str = "",
    generator: dict | None = None,
) -> dict:
    """One canonical row from 16 kHz mono samples."""
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
    return {
        "id": id,
        "audio": {"bytes": encode_wav(samples), "path": f"{id}.wav"},
        "text": text,
        "speaker": speaker,
        "accent": accent,
        "origin": origin,
        "parent_id": parent_id,
        "generator": json.dumps(generator or {}, sort_keys=True),
        "duration": float(len(samples)) / SAMPLE_RATE,
    }


def generator_label(origin: str, generator: dict) -> str:
    """What made a row, for counts and figures: the TTS engine, or `perturbed:<split it came from>`."""
    if origin == "perturbed":
        return f"perturbed:{generator.get('source_split', '')}"
    return generator.get("engine", "") or origin


def without_audio_decoding(ds):
    """The same dataset with audio left as WAV bytes; we decode with soundfile (fast, no ffmpeg)."""
    return ds.cast_column("audio", Audio(sampling_rate=SAMPLE_RATE, decode=False))


def load_split(path: str | os.PathLike, split: str | None = None):
    """Load a dataset written by a stage; ``split`` picks one from a saved DatasetDict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run the stage that writes it first (see run_finetune.sh --help)"
        )
    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split is None:
            raise ValueError(f"{path} holds splits {list(ds)}; name one")
        if split not in ds:
            raise KeyError(f"{path} has no split {split!r}; it has {list(ds)}")
        ds = ds[split]
    return ds
