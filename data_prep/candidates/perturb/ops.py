"""Ops: each perturbation's name, its parameters with defaults and bounds, and how one concrete
draw (an op record such as ``{"op": "speed", "factor": 1.07}``) is applied and replayed."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from core.schema import SAMPLE_RATE
from data_prep.candidates.perturb import dsp
from data_prep.candidates.perturb.banks import bank_excerpt, bank_rir


@dataclasses.dataclass(frozen=True)
class Param:
    default: Any
    bounds: tuple[float, float] | None = None  # numeric parameters: allowed [lo, hi]
    decimals: int | None = None  # draws are rounded so the record is short and replays exactly


# Default ranges are those of the issue and common ASR augmentation practice (Ko et al. 2015
# speed 0.9-1.1; SNR 5-30 dB; RT60 0.2-0.8 s for offices and living rooms; Jaitly & Hinton
# 2013 VTLP alpha 0.9-1.1). Band limits default to the span between narrowband (3.4 kHz
# telephone) and wideband (7 kHz, G.722) channels.
OPS: dict[str, dict[str, Param]] = {
    "speed": {"factor": Param([0.85, 1.15], (0.5, 2.0), 3)},
    "tempo": {"factor": Param([0.85, 1.15], (0.5, 2.0), 3)},
    "pitch": {"semitones": Param([-3.0, 3.0], (-12.0, 12.0), 2)},
    "gain": {"db": Param([-6.0, 6.0], (-60.0, 40.0), 2)},
    "noise": {
        "snr_db": Param([5.0, 30.0], (-20.0, 80.0), 2),
        "color": Param(["white", "pink", "brown"]),
        "dir": Param(""),
    },
    "reverb": {
        "rt60": Param([0.2, 0.8], (0.05, 3.0), 3),
        "drr_db": Param([0.0, 12.0], (-20.0, 40.0), 2),
        "dir": Param(""),
    },
    "telephone": {"low_hz": Param(300.0, (50.0, 1000.0), 0), "high_hz": Param(3400.0, (2000.0, 3900.0), 0)},
    "codec": {"law": Param(list(dsp.G711_LAWS))},
    "bandlimit": {"cutoff_hz": Param([3000.0, 7000.0], (500.0, 7900.0), 0)},
    "formant": {"alpha": Param([0.9, 1.1], (0.7, 1.4), 3)},
}


def apply_op(wav: torch.Tensor, op: dict[str, Any], sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Apply one concrete op record (as drawn by ``sample_ops``)."""
    name = op["op"]
    if name == "speed":
        return dsp.speed(wav, op["factor"])
    if name == "tempo":
        return dsp.tempo(wav, op["factor"])
    if name == "pitch":
        return dsp.pitch_shift(wav, op["semitones"])
    if name == "gain":
        return dsp.gain(wav, op["db"])
    if name == "noise":
        if op.get("file"):
            noise = bank_excerpt(op["dir"], op["file"], wav.shape[-1], op["offset_frac"], sample_rate)
        else:
            noise = dsp.colored_noise(wav.shape[-1], op["color"], torch.Generator().manual_seed(op["seed"]))
        return dsp.add_noise(wav, noise, op["snr_db"])
    if name == "reverb":
        if op.get("file"):
            rir = bank_rir(op["dir"], op["file"], sample_rate)
        else:
            rir = dsp.synthetic_rir(
                op["rt60"], op["drr_db"], torch.Generator().manual_seed(op["seed"]), sample_rate
            )
        return dsp.reverberate(wav, rir)
    if name == "telephone":
        return dsp.telephone(wav, op["low_hz"], op["high_hz"], sample_rate)
    if name == "codec":
        return dsp.codec(wav, op["law"], sample_rate)
    if name == "bandlimit":
        return dsp.bandlimit(wav, op["cutoff_hz"], sample_rate)
    if name == "formant":
        return dsp.formant(wav, op["alpha"], sample_rate)
    raise ValueError(f"unknown op {name!r}; known ops: {sorted(OPS)}")


def apply_ops(wav: torch.Tensor, ops: list[dict[str, Any]], sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Apply op records in order: replays a ``perturb`` record's ``ops``."""
    for op in ops:
        wav = apply_op(wav, op, sample_rate)
    return wav
