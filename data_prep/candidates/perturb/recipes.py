"""Recipes: seeded, serializable chains of ops; parsing and validation, drawing the ops of one
candidate (``sample_ops``) and applying them (``perturb``).

Why: the filter can only accept what the generators propose, so the proposal must cover the
acoustic conditions of the target (rooms, noise, telephone lines, speaking rate, voice pitch).

Recipe format
-------------
A recipe is data: a mapping (YAML or JSON file, or one of ``BUILTIN_RECIPES``)::

    min_ops: 1              # if the coin flips pick fewer ops, add ops (weighted by p) up to this
    ops:                    # applied in this order; each op is drawn independently with prob. p
      - {op: speed, p: 0.3, factor: [0.85, 1.15]}        # [lo, hi] of numbers: uniform draw
      - {op: noise, p: 0.4, snr_db: [5, 30], color: [white, pink, brown]}  # list of words: choice
      - {op: reverb, p: 0.3, rt60: [0.2, 0.8], drr_db: {choice: [0, 6, 12]}}  # explicit choice
      - {op: gain, p: 0.5, db: -3}                        # a scalar: fixed value

A file may also be a bare list of ops (``min_ops`` then defaults to 1). Ops and their parameters
(defaults in ``OPS``): ``speed(factor)`` resamples (tempo and pitch change together, as in Kaldi
speed perturbation); ``tempo(factor)`` changes the rate only; ``pitch(semitones)`` changes the
pitch only; ``gain(db)``; ``noise(snr_db, color | dir)`` adds white/pink/brown noise or a random
excerpt of a file from ``dir`` (a folder of audio files or a saved ``datasets`` folder with an
``audio`` column); ``reverb(rt60, drr_db | dir)`` convolves with a synthetic exponential-decay
room response or a random RIR file from ``dir``; ``telephone(low_hz, high_hz)`` band-passes,
goes through 8 kHz and 8-bit mu-law and back; ``codec(law)`` is that codec without the
band-pass, with ``law`` ``mu-law`` or ``a-law`` (G.711); ``bandlimit(cutoff_hz)`` removes what is
above ``cutoff_hz`` (a narrowband or wideband recording, a resampling chain);
``formant(alpha)`` is vocal-tract-length perturbation: formants scale by ``alpha`` (> 1: a
shorter vocal tract) while pitch and duration stay.

``perturb(wav, recipe, seed)`` draws concrete parameters with its own ``numpy`` generator and
returns the audio and a record ``{"seed", "ops": [{"op": ..., <exact parameters>}], "peak_scale"}``;
``apply_ops(wav, record["ops"])`` replays a record.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from core.schema import SAMPLE_RATE
from data_prep.candidates.perturb.banks import bank_names
from data_prep.candidates.perturb.dsp import check_mono
from data_prep.candidates.perturb.ops import OPS, Param, apply_ops

# Output peaks above this are scaled down after a recipe: 16-bit PCM would clip them.
PEAK_LIMIT = 0.99


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One op of a recipe: the probability it is drawn with, and its parameter specs."""

    op: str
    p: float
    params: dict[str, Any]  # name -> fixed value, [lo, hi], list of choices, or {"choice": [...]}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe; ``to_dict`` is what the generate stage hashes into a shard's fingerprint."""

    ops: tuple[OpSpec, ...]
    min_ops: int = 1
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"min_ops": self.min_ops, "ops": [{"op": o.op, "p": o.p, **o.params} for o in self.ops]}


BUILTIN_RECIPES: dict[str, dict[str, Any]] = {
    # A broad proposal: every kind of condition, each with a moderate probability.
    "default": {
        "min_ops": 1,
        "ops": [
            {"op": "speed", "p": 0.3, "factor": [0.85, 1.15]},
            {"op": "pitch", "p": 0.3, "semitones": [-3.0, 3.0]},
            {"op": "reverb", "p": 0.3, "rt60": [0.2, 0.8], "drr_db": [0.0, 12.0]},
            {"op": "noise", "p": 0.4, "snr_db": [5.0, 30.0], "color": ["white", "pink", "brown"]},
            {"op": "telephone", "p": 0.15},
            {"op": "gain", "p": 0.5, "db": [-12.0, 6.0]},
        ],
    },
    # For telephone targets (e.g. the 8 kHz asterisk prompts): always through the channel.
    "telephone": {
        "min_ops": 1,
        "ops": [
            {"op": "speed", "p": 0.3, "factor": [0.9, 1.1]},
            {"op": "pitch", "p": 0.3, "semitones": [-2.0, 2.0]},
            {"op": "noise", "p": 0.5, "snr_db": [15.0, 40.0], "color": ["white", "pink"]},
            {"op": "telephone", "p": 1.0, "low_hz": [250.0, 400.0], "high_hz": [3100.0, 3600.0]},
            {"op": "gain", "p": 0.5, "db": [-6.0, 3.0]},
        ],
    },
    # Gives clean TTS renderings a target's acoustics: another voice (formants, pitch, rate),
    # then its room, noise and channel, in the order they act on a real recording.
    "channel": {
        "min_ops": 1,
        "ops": [
            {"op": "formant", "p": 0.4, "alpha": [0.9, 1.1]},
            {"op": "pitch", "p": 0.3, "semitones": [-2.0, 2.0]},
            {"op": "tempo", "p": 0.3, "factor": [0.9, 1.1]},
            {"op": "reverb", "p": 0.25, "rt60": [0.2, 0.5], "drr_db": [6.0, 15.0]},
            {"op": "noise", "p": 0.4, "snr_db": [10.0, 30.0], "color": ["white", "pink", "brown"]},
            {"op": "bandlimit", "p": 0.3, "cutoff_hz": [3400.0, 7000.0]},
            {"op": "codec", "p": 0.15, "law": ["mu-law", "a-law"]},
            {"op": "telephone", "p": 0.15, "low_hz": [250.0, 400.0], "high_hz": [3100.0, 3600.0]},
            {"op": "gain", "p": 0.3, "db": [-6.0, 3.0]},
        ],
    },
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_value(op: str, key: str, value: Any, param: Param, source: str) -> None:
    """Reject a parameter spec that could not be drawn or is out of its op's bounds."""
    if isinstance(value, dict):
        if set(value) != {"choice"} or not isinstance(value["choice"], list) or not value["choice"]:
            raise ValueError(
                f"{source}: {op}.{key}: a mapping must be {{choice: [non-empty list]}}, got {value}"
            )
        values = value["choice"]
    elif isinstance(value, list):
        if not value:
            raise ValueError(f"{source}: {op}.{key}: empty list")
        if all(_is_number(v) for v in value) and len(value) != 2:
            raise ValueError(
                f"{source}: {op}.{key}: a numeric range is [lo, hi]; for a choice write {{choice: {value}}}"
            )
        if len(value) == 2 and all(_is_number(v) for v in value) and value[0] > value[1]:
            raise ValueError(f"{source}: {op}.{key}: range [lo, hi] has lo > hi: {value}")
        values = value
    else:
        values = [value]
    if param.bounds is not None:
        lo, hi = param.bounds
        for v in values:
            if not _is_number(v) or not lo <= v <= hi:
                raise ValueError(f"{source}: {op}.{key}={v!r} must be a number in [{lo}, {hi}]")


def recipe_from_dict(data: Any, name: str = "", source: str = "recipe") -> Recipe:
    """Validate recipe data (see the module docstring) into a ``Recipe``; errors name ``source``."""
    if isinstance(data, list):
        data = {"ops": data}
    if not isinstance(data, dict) or not isinstance(data.get("ops"), list):
        raise ValueError(f"{source}: a recipe is a list of ops or a mapping with an `ops` list")
    unknown = set(data) - {"ops", "min_ops"}
    if unknown:
        raise ValueError(f"{source}: unknown recipe key(s) {sorted(unknown)}; allowed: ops, min_ops")
    specs = []
    for i, raw in enumerate(data["ops"]):
        if not isinstance(raw, dict) or raw.get("op") not in OPS:
            raise ValueError(
                f"{source}: op #{i} must be a mapping with `op` one of {sorted(OPS)}, got {raw!r}"
            )
        op = raw["op"]
        p = raw.get("p", 1.0)
        if not _is_number(p) or not 0.0 <= p <= 1.0:
            raise ValueError(f"{source}: {op}.p must be a probability in [0, 1], got {p!r}")
        params = {k: v for k, v in raw.items() if k not in ("op", "p")}
        bad = set(params) - set(OPS[op])
        if bad:
            raise ValueError(f"{source}: {op} has no parameter(s) {sorted(bad)}; it takes {sorted(OPS[op])}")
        full = {k: params.get(k, spec.default) for k, spec in OPS[op].items()}
        for key, value in full.items():
            _check_value(op, key, value, OPS[op][key], source)
        specs.append(OpSpec(op=op, p=float(p), params=full))
    min_ops = data.get("min_ops", 1)
    if not isinstance(min_ops, int) or not 0 <= min_ops <= len(specs):
        raise ValueError(
            f"{source}: min_ops must be an integer in [0, number of ops = {len(specs)}], got {min_ops!r}"
        )
    return Recipe(ops=tuple(specs), min_ops=min_ops, name=name)


def load_recipe(spec: str) -> Recipe:
    """A builtin recipe by name, or a YAML/JSON recipe file."""
    if spec in BUILTIN_RECIPES:
        return recipe_from_dict(BUILTIN_RECIPES[spec], name=spec, source=f"builtin recipe {spec!r}")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"perturbation recipe {spec!r} is neither a builtin ({sorted(BUILTIN_RECIPES)}) nor a file"
        )
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return recipe_from_dict(data, name=str(path), source=str(path))


def _draw(value: Any, param: Param, rng: np.random.Generator) -> Any:
    if isinstance(value, dict):
        return value["choice"][int(rng.integers(len(value["choice"])))]
    if isinstance(value, list):
        if len(value) == 2 and all(_is_number(v) for v in value):
            x = float(rng.uniform(value[0], value[1]))
            return round(x, param.decimals) if param.decimals is not None else x
        return value[int(rng.integers(len(value)))]
    return value


def sample_ops(recipe: Recipe, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Draw which ops apply and their exact parameters; the result replays with ``apply_ops``."""
    chosen = [bool(rng.random() < spec.p) for spec in recipe.ops]
    while sum(chosen) < recipe.min_ops:
        # Fill up to min_ops, weighted by p so a rare op stays rare; equal weights if all p are 0.
        free = [i for i, c in enumerate(chosen) if not c]
        weights = np.array([recipe.ops[i].p for i in free])
        if weights.sum() == 0:
            weights = np.ones(len(free))
        chosen[free[int(rng.choice(len(free), p=weights / weights.sum()))]] = True
    out = []
    for spec, use in zip(recipe.ops, chosen, strict=True):
        if not use:
            continue
        op: dict[str, Any] = {"op": spec.op}
        for key, value in spec.params.items():
            if key == "dir":
                continue
            op[key] = _draw(value, OPS[spec.op][key], rng)
        if spec.op in ("noise", "reverb"):
            directory = spec.params["dir"]
            if directory:
                names = bank_names(directory)
                for key in ("color", "rt60", "drr_db"):
                    op.pop(key, None)  # a file replaces the synthetic source's parameters
                op.update(dir=directory, file=names[int(rng.integers(len(names)))])
                if spec.op == "noise":
                    op["offset_frac"] = round(float(rng.random()), 6)
            else:
                op["seed"] = int(rng.integers(2**31 - 1))
        out.append(op)
    return out


def perturb(
    wav: torch.Tensor, recipe: Recipe, seed: int, sample_rate: int = SAMPLE_RATE
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Apply a recipe with its own generator seeded by ``seed``; same seed, same audio and record."""
    check_mono(wav)
    rng = np.random.default_rng(seed)
    ops = sample_ops(recipe, rng)
    out = apply_ops(wav.float(), ops, sample_rate)
    peak = float(out.abs().max()) if out.numel() else 0.0
    scale = PEAK_LIMIT / peak if peak > PEAK_LIMIT else 1.0
    if scale != 1.0:
        out = out * scale
    return out, {"recipe": recipe.name, "seed": int(seed), "ops": ops, "peak_scale": scale}
