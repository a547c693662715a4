"""Offline WER/CER: `evaluate` modules shipped in this package, and text normalizers."""

from __future__ import annotations

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str):
    """`evaluate.load` of a metric module shipped here (``wer`` or ``cer``), by absolute path."""
    script = METRICS_DIR / name / f"{name}.py"
    if not script.is_file():
        raise ValueError(f"no metric module {name!r} in {METRICS_DIR}; available: wer, cer")
    return evaluate.load(str(script))
