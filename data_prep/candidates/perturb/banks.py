"""Audio banks: the noise and room-response files a recipe's ``dir`` names, from a folder of audio
files or a saved ``datasets`` folder with an ``audio`` column, decoded once and cached."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF
from datasets import Audio, load_from_disk

_AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif"}


@functools.lru_cache(maxsize=16)
def bank_names(directory: str) -> tuple[str, ...]:
    """Item names of an audio bank: relative file paths, or ``#<row>`` of a saved dataset."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} not found: fix the recipe's `dir` (noise or RIR files)")
    if (root / "dataset_info.json").is_file():
        return tuple(f"#{i}" for i in range(len(load_from_disk(str(root)))))
    names = tuple(
        sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in _AUDIO_SUFFIXES)
    )
    if not names:
        raise FileNotFoundError(f"no audio files ({', '.join(sorted(_AUDIO_SUFFIXES))}) under {root}")
    return names


# Noise banks are reused across thousands of candidates; 64 decoded files is a bounded cache.
@functools.lru_cache(maxsize=64)
def bank_audio(directory: str, name: str, sample_rate: int) -> torch.Tensor:
    """One bank item as mono float32 at ``sample_rate``."""
    root = Path(directory)
    if name.startswith("#"):
        ds = load_from_disk(str(root))
        cell = ds.cast_column("audio", Audio(decode=False))[int(name[1:])]["audio"]
        source = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell["path"]
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    else:
        data, rate = sf.read(str(root / name), dtype="float32", always_2d=True)
    audio = torch.from_numpy(data.mean(axis=1))
    if rate != sample_rate:
        audio = AF.resample(audio, rate, sample_rate)
    if audio.numel() == 0:
        raise ValueError(f"{root / name} holds no samples: remove it from the audio bank")
    return audio


def bank_excerpt(
    directory: str, name: str, length: int, offset_frac: float, sample_rate: int
) -> torch.Tensor:
    """``length`` samples of a bank item from a relative offset, looped if the item is shorter."""
    audio = bank_audio(directory, name, sample_rate)
    if audio.numel() < length:
        audio = audio.repeat(-(-length // audio.numel()) + 1)
    start = int(offset_frac * (audio.numel() - length))
    return audio[start : start + length]


def bank_rir(directory: str, name: str, sample_rate: int) -> torch.Tensor:
    """A recorded room response scaled to a unit peak (files come at any level; ``reverberate``
    keeps the speech's energy either way)."""
    rir = bank_audio(directory, name, sample_rate)
    return rir / rir.abs().max().clamp_min(1e-12)
