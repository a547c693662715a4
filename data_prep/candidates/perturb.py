"""Acoustic perturbations: pure functions on mono waveforms, and seeded recipes that chain them.

Why: the filter can only accept what the generators propose, so the proposal must cover the
acoustic conditions of the target (rooms, noise, telephone lines, speaking rate, voice pitch).
Every function here is a pure function of a 1-D float32 tensor and explicit parameters (noise
and room responses take an explicit seed), so a candidate's ``generator`` record replays it.

Signal functions: ``gain``, ``speed``, ``tempo``, ``time_stretch`` (WSOLA), ``pitch_shift``,
``colored_noise``, ``add_noise``, ``synthetic_rir``, ``reverberate``, ``telephone``.

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
goes through 8 kHz and 8-bit mu-law and back.

``perturb(wav, recipe, seed)`` draws concrete parameters with its own ``numpy`` generator and
returns the audio and a record ``{"seed", "ops": [{"op": ..., <exact parameters>}], "peak_scale"}``;
``apply_ops(wav, record["ops"])`` replays a record.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
import yaml

from core.schema import SAMPLE_RATE

# A rational p/q with q <= 100 approximates any factor to 5e-5 relative, and keeps torchaudio's
# polyphase resampler small (its cost grows with q): speed runs at thousands x real time, while
# the exact ratio of an arbitrary float can have q in the thousands (minutes per clip).
MAX_RATIO_DENOMINATOR = 100
# Output peaks above this are scaled down after a recipe: 16-bit PCM would clip them.
PEAK_LIMIT = 0.99
# Energy decays by 60 dB over RT60 seconds: amplitude exp(-ln(1000) t / RT60).
_LN_1000 = math.log(1000.0)


def _check_mono(wav: torch.Tensor) -> None:
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (time,), got shape {tuple(wav.shape)}")


def _ratio(factor: float) -> Fraction:
    if not factor > 0:
        raise ValueError(f"a rate factor must be positive, got {factor}")
    return Fraction(factor).limit_denominator(MAX_RATIO_DENOMINATOR)


# ---------------------------------------------------------------------------------------------
# Signal functions
# ---------------------------------------------------------------------------------------------
def gain(wav: torch.Tensor, db: float) -> torch.Tensor:
    """Scale by ``db`` decibels (no clipping here: ``perturb`` limits the final peak)."""
    return wav * (10.0 ** (db / 20.0))


def speed(wav: torch.Tensor, factor: float) -> torch.Tensor:
    """Play ``factor`` times faster by resampling: duration / factor, pitch x factor."""
    _check_mono(wav)
    r = _ratio(factor)
    return AF.resample(wav, r.numerator, r.denominator)


def time_stretch(wav: torch.Tensor, length: int, hop: int = 320, search: int = 128) -> torch.Tensor:
    """Change the duration to ``length`` samples without changing the pitch (WSOLA).

    Waveform-similarity overlap-add (Verhelst & Roelands 1993): output frames of 2*hop samples
    are cut from the input near their nominal position, each shifted by up to ``search`` samples
    to best continue the previous frame (normalised cross-correlation), then overlap-added with a
    Hann window. It keeps the waveform coherent (no phase-vocoder "phasiness") and costs one
    short correlation per 20 ms frame. The defaults (20 ms hop, +-8 ms search at 16 kHz) cover
    half a pitch period of voices down to about 60 Hz, which is what alignment needs.
    """
    _check_mono(wav)
    y = wav.detach().cpu().numpy().astype(np.float32, copy=False)
    n_in, frame = len(y), 2 * hop
    if length <= 0:
        raise ValueError(f"time_stretch needs a positive target length, got {length}")
    alpha = n_in / length
    n_frames = -(-length // hop) + 1
    # Zero padding on both sides so every candidate window is inside the array.
    pad = frame + search
    tail = pad + frame + max(0, int(math.ceil(n_frames * hop * alpha)) - n_in)
    yp = np.concatenate([np.zeros(pad, np.float32), y, np.zeros(tail, np.float32)])
    energy = np.concatenate([[0.0], np.cumsum(yp.astype(np.float64) ** 2)])
    starts = np.empty(n_frames, np.int64)
    # Output frame j covers output samples [(j-1)*hop, (j+1)*hop): its nominal input start is
    # the input time of (j-1)*hop.
    nominal = pad + np.round(np.arange(n_frames) * hop * alpha).astype(np.int64) - hop
    starts[0] = nominal[0]
    for j in range(1, n_frames):
        target = yp[starts[j - 1] + hop : starts[j - 1] + hop + frame]
        lo = nominal[j] - search
        corr = np.correlate(yp[lo : lo + frame + 2 * search], target, "valid")
        seg_energy = energy[lo + frame : lo + frame + 2 * search + 1] - energy[lo : lo + 2 * search + 1]
        starts[j] = lo + int(np.argmax(corr / np.sqrt(seg_energy + 1e-9)))
    window = np.hanning(frame + 1)[:frame].astype(np.float32)  # periodic Hann: halves sum to 1
    frames = np.lib.stride_tricks.sliding_window_view(yp, frame)[starts] * window
    out = np.zeros((n_frames + 1) * hop, np.float32)
    out[: n_frames * hop] += frames[:, :hop].reshape(-1)
    out[hop:] += frames[:, hop:].reshape(-1)
    return torch.from_numpy(out[hop : hop + length].copy())


def tempo(wav: torch.Tensor, factor: float) -> torch.Tensor:
    """Speak ``factor`` times faster at the same pitch."""
    return time_stretch(wav, max(1, round(wav.shape[-1] / factor)))


def pitch_shift(wav: torch.Tensor, semitones: float) -> torch.Tensor:
    """Shift the pitch by ``semitones`` and keep the exact duration.

    Resampling by the pitch ratio moves pitch and duration together; WSOLA then restores the
    duration. torchaudio's ``pitch_shift`` does the same with a phase vocoder but resamples by
    ``int(sr / ratio)`` Hz, a ratio whose reduced denominator is in the thousands: slower than
    real time on a 10 s clip. A rational approximation with a small denominator is exact to
    0.002 semitones and runs hundreds of times faster than real time.
    """
    _check_mono(wav)
    if abs(semitones) > 12:
        raise ValueError(f"pitch shifts beyond an octave are not speech augmentation: {semitones} semitones")
    r = _ratio(2.0 ** (semitones / 12.0))
    return time_stretch(AF.resample(wav, r.numerator, r.denominator), wav.shape[-1])


NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # exponent b of the power spectrum 1/f^b


def colored_noise(length: int, color: str, generator: torch.Generator) -> torch.Tensor:
    """Unit-variance Gaussian noise whose power spectrum falls as 1/f^b (white 0, pink 1, brown 2)."""
    if color not in NOISE_COLORS:
        raise ValueError(f"unknown noise color {color!r}; choose one of {sorted(NOISE_COLORS)}")
    white = torch.randn(length, generator=generator)
    b = NOISE_COLORS[color]
    if b == 0.0:
        return white
    spec = torch.fft.rfft(white)
    freqs = torch.arange(spec.shape[-1], dtype=torch.float32)
    freqs[0] = 1.0  # the DC bin is zeroed below; avoid dividing by zero
    spec = spec * freqs.pow(-b / 2.0)
    spec[0] = 0.0
    noise = torch.fft.irfft(spec, n=length)
    return noise / noise.pow(2).mean().sqrt().clamp_min(1e-12)  # unit power (the mean is zero)


def add_noise(wav: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Add ``noise`` scaled so that the whole-clip signal-to-noise ratio is ``snr_db``."""
    _check_mono(wav)
    if noise.shape != wav.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from the waveform's {tuple(wav.shape)}")
    if float(noise.pow(2).sum()) == 0.0 or float(wav.pow(2).sum()) == 0.0:
        return wav.clone()  # an SNR is undefined against silence: nothing to scale
    return AF.add_noise(wav[None], noise[None], torch.tensor([float(snr_db)]))[0]


def synthetic_rir(
    rt60: float, drr_db: float, generator: torch.Generator, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """A room impulse response: a unit direct path plus an exponentially decaying noise tail.

    The tail (Polack's statistical model) decays by 60 dB over ``rt60`` s and is scaled so the
    direct-to-reverberant energy ratio is ``drr_db``: the two numbers that describe a room and
    a talker's distance. It starts 2.5 ms after the direct path, the order of the first wall
    reflection in a small room.
    """
    if not 0.05 <= rt60 <= 3.0:
        raise ValueError(f"rt60 must be in [0.05, 3] s (rooms, not cathedrals), got {rt60}")
    n = max(2, int(rt60 * sample_rate))
    t = torch.arange(n, dtype=torch.float32) / sample_rate
    tail = torch.randn(n, generator=generator) * torch.exp(-_LN_1000 * t / rt60)
    tail[: max(1, int(0.0025 * sample_rate))] = 0.0
    tail = tail * math.sqrt(10.0 ** (-drr_db / 10.0) / float(tail.pow(2).sum()))
    tail[0] = 1.0
    return tail


def _fft_size(n: int) -> int:
    # The FFT of a power of two is always fast; an arbitrary n can have large prime factors
    # (torchaudio's fftconvolve uses n as is and ran 3x slower here).
    return 1 << (n - 1).bit_length()


def reverberate(wav: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve with a room response, keeping the length and the energy of the input.

    The output is cut at the input's length (the decaying tail past the end is dropped) so
    transcripts and durations stay aligned; the energy is restored so a later SNR or gain
    means the same thing with and without reverberation.
    """
    _check_mono(wav)
    n = wav.shape[-1]
    size = _fft_size(n + rir.shape[-1] - 1)
    out = torch.fft.irfft(torch.fft.rfft(wav, size) * torch.fft.rfft(rir, size), size)[:n]
    in_energy, out_energy = float(wav.pow(2).sum()), float(out.pow(2).sum())
    if out_energy > 0.0:
        out = out * math.sqrt(in_energy / out_energy)
    return out


# A 4th-order Butterworth filter is two biquads with these quality factors (poles at 22.5 and
# 67.5 degrees); torchaudio's biquads are 2nd order, too gentle for a telephone band edge.
_BUTTERWORTH4_Q = (0.5412, 1.3066)
_TELEPHONE_RATE = 8000
_MU_LAW_CHANNELS = 256  # G.711: 8 bits per sample


def telephone(
    wav: torch.Tensor, low_hz: float = 300.0, high_hz: float = 3400.0, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """A narrow-band telephone channel: band-pass, 8 kHz, 8-bit mu-law (G.711), and back.

    The input is clipped to [-1, 1] first, as a real codec would saturate.
    """
    _check_mono(wav)
    if not 0 < low_hz < high_hz < _TELEPHONE_RATE / 2:
        raise ValueError(f"telephone band must satisfy 0 < low_hz < high_hz < 4000, got {low_hz}-{high_hz}")
    x = wav.clamp(-1.0, 1.0)
    for q in _BUTTERWORTH4_Q:
        x = AF.highpass_biquad(x, sample_rate, low_hz, q)
        x = AF.lowpass_biquad(x, sample_rate, high_hz, q)
    x = AF.resample(x, sample_rate, _TELEPHONE_RATE)
    x = AF.mu_law_decoding(AF.mu_law_encoding(x.clamp(-1.0, 1.0), _MU_LAW_CHANNELS), _MU_LAW_CHANNELS)
    return AF.resample(x, _TELEPHONE_RATE, sample_rate)[: wav.shape[-1]]


# ---------------------------------------------------------------------------------------------
# Audio banks: noise and RIR files from a folder or a saved dataset
# ---------------------------------------------------------------------------------------------
_AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif"}


@functools.lru_cache(maxsize=16)
def _bank_names(directory: str) -> tuple[str, ...]:
    """Item names of an audio bank: relative file paths, or ``#<row>`` of a saved dataset."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} not found: fix the recipe's `dir` (noise or RIR files)")
    if (root / "dataset_info.json").is_file():
        from datasets import load_from_disk

        return tuple(f"#{i}" for i in range(len(load_from_disk(str(root)))))
    names = tuple(
        sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in _AUDIO_SUFFIXES)
    )
    if not names:
        raise FileNotFoundError(f"no audio files ({', '.join(sorted(_AUDIO_SUFFIXES))}) under {root}")
    return names


# Noise banks are reused across thousands of candidates; 64 decoded files is a bounded cache.
@functools.lru_cache(maxsize=64)
def _bank_audio(directory: str, name: str, sample_rate: int) -> torch.Tensor:
    import soundfile as sf

    root = Path(directory)
    if name.startswith("#"):
        from datasets import Audio, load_from_disk

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


def _bank_excerpt(
    directory: str, name: str, length: int, offset_frac: float, sample_rate: int
) -> torch.Tensor:
    """``length`` samples of a bank item from a relative offset, looped if the item is shorter."""
    audio = _bank_audio(directory, name, sample_rate)
    if audio.numel() < length:
        audio = audio.repeat(-(-length // audio.numel()) + 1)
    start = int(offset_frac * (audio.numel() - length))
    return audio[start : start + length]


# ---------------------------------------------------------------------------------------------
# Ops: a name, its parameters with defaults and bounds, and how to apply one concrete draw
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Param:
    default: Any
    bounds: tuple[float, float] | None = None  # numeric parameters: allowed [lo, hi]
    decimals: int | None = None  # draws are rounded so the record is short and replays exactly


# Default ranges are those of the issue and common ASR augmentation practice (Ko et al. 2015
# speed 0.9-1.1; SNR 5-30 dB; RT60 0.2-0.8 s for offices and living rooms).
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
}


def apply_op(wav: torch.Tensor, op: dict[str, Any], sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Apply one concrete op record (as drawn by ``sample_ops``)."""
    name = op["op"]
    if name == "speed":
        return speed(wav, op["factor"])
    if name == "tempo":
        return tempo(wav, op["factor"])
    if name == "pitch":
        return pitch_shift(wav, op["semitones"])
    if name == "gain":
        return gain(wav, op["db"])
    if name == "noise":
        if op.get("file"):
            noise = _bank_excerpt(op["dir"], op["file"], wav.shape[-1], op["offset_frac"], sample_rate)
        else:
            noise = colored_noise(wav.shape[-1], op["color"], torch.Generator().manual_seed(op["seed"]))
        return add_noise(wav, noise, op["snr_db"])
    if name == "reverb":
        if op.get("file"):
            rir = _bank_audio(op["dir"], op["file"], sample_rate)
            rir = rir / rir.abs().max().clamp_min(1e-12)
        else:
            rir = synthetic_rir(
                op["rt60"], op["drr_db"], torch.Generator().manual_seed(op["seed"]), sample_rate
            )
        return reverberate(wav, rir)
    if name == "telephone":
        return telephone(wav, op["low_hz"], op["high_hz"], sample_rate)
    raise ValueError(f"unknown op {name!r}; known ops: {sorted(OPS)}")


def apply_ops(wav: torch.Tensor, ops: list[dict[str, Any]], sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    for op in ops:
        wav = apply_op(wav, op, sample_rate)
    return wav


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OpSpec:
    op: str
    p: float
    params: dict[str, Any]  # name -> fixed value, [lo, hi], list of choices, or {"choice": [...]}


@dataclasses.dataclass(frozen=True)
class Recipe:
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
                names = _bank_names(directory)
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
    _check_mono(wav)
    rng = np.random.default_rng(seed)
    ops = sample_ops(recipe, rng)
    out = apply_ops(wav.float(), ops, sample_rate)
    peak = float(out.abs().max()) if out.numel() else 0.0
    scale = PEAK_LIMIT / peak if peak > PEAK_LIMIT else 1.0
    if scale != 1.0:
        out = out * scale
    return out, {"recipe": recipe.name, "seed": int(seed), "ops": ops, "peak_scale": scale}
