"""Shared test helpers: synthesized audio, tiny sources on disk, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


def edacc_features():
    """EdAcc's Hub features (edinburghcstr/edacc, parquet), in its column order."""
    from datasets import Audio, Features, Value

    text = Value("string")
    return Features(
        {
            **{k: text for k in ("speaker", "text", "accent", "raw_accent", "gender", "l1")},
            "audio": Audio(sampling_rate=16_000),
        }
    )


def tone(
    seconds: float, rate: int = 16_000, freq: float = 220.0, seed: int = 0, channels: int = 1
) -> np.ndarray:
    """A voiced-looking test signal: a harmonic tone with a slow envelope and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6))
    x = 0.3 * x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def write_wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate)
    return path


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` beside the repository (or $ASR_SHARED_DATA); skips when absent."""
    root = Path(os.environ.get("ASR_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root}")
    return root


def written(folder) -> list[str]:
    """Files a run left under ``folder``, except the hidden lock files (``.<name>.lock``) that
    stay on purpose (core.locks): "nothing written" means no output, not no lock."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".lock"))
    )
