"""Speed of every candidate generator, in audio seconds produced per wall second on one core.

    python bench/generate_speed.py [--seconds 10] [--repeats 5] [--speech_dir DIR] [--json out.json]

Perturbations run on a 10 s clip (real speech from the 16 kHz FLAC files under ``--speech_dir``,
e.g. LibriSpeech excerpts, else a synthetic harmonic tone) with one torch thread, next to the torchaudio call one would write
without this module (the baseline). TTS engines are called through ``data_prep.candidates.tts`` on short
sentences, process start included; engines that are not installed are skipped. Targets (issue
3): every perturbation >= 200x real time per core, espeak-ng and flite >= 50x.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.schema import SAMPLE_RATE  # noqa: E402
from data_prep.candidates import perturb as P  # noqa: E402
from data_prep.candidates import tts  # noqa: E402

PERTURB_TARGET = 200.0
# The TTS target covers the two fast formant/diphone engines; festival and piper are
# slower by design (unit selection, a neural net) and are reported without a target.
TTS_TARGETS = {"espeak-ng": 50.0, "flite": 50.0}
SENTENCES = [
    "Please hold the line while we connect your call.",
    "The quick brown fox jumps over the lazy dog.",
    "Press one for sales, two for support.",
    "Thank you for calling, goodbye.",
    "Your appointment is confirmed for Tuesday at nine thirty.",
]


def test_clip(seconds: float, speech_dir: str) -> tuple[torch.Tensor, str]:
    """``seconds`` of real speech (the 16 kHz FLAC files under ``speech_dir``, concatenated) or a
    harmonic tone when there are none (or too few seconds of them)."""
    root = Path(speech_dir) if speech_dir else None
    files = sorted(root.rglob("*.flac")) if root is not None and root.is_dir() else []
    if files:
        parts, total = [], 0
        for f in files:
            data, rate = sf.read(f, dtype="float32", always_2d=True)
            if rate != SAMPLE_RATE:
                continue
            parts.append(data.mean(axis=1))
            total += len(parts[-1])
            if total >= seconds * SAMPLE_RATE:
                return torch.from_numpy(
                    np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]
                ), f"speech from {root}"
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = sum(torch.sin(2 * math.pi * 150 * k * t) / k for k in range(1, 8)) * (
        0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t)
    )
    return (0.2 * x).float(), "synthetic harmonic tone"


def rate(fn, audio_seconds: float, repeats: int) -> tuple[float, float]:
    """Audio seconds per wall second and per CPU second (medians of ``repeats`` after a warm-up).

    On a shared machine the wall figure drops with other people's load; the CPU figure
    (``process_time``: this process only, nanosecond clock) is what one dedicated core would do.
    """
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return audio_seconds / statistics.median(walls), audio_seconds / max(statistics.median(cpus), 1e-9)


def median_f0(wav: torch.Tensor) -> float:
    """Median pitch over frames with a plausible voice F0 (torchaudio's NCCF detector)."""
    f0 = AF.detect_pitch_frequency(wav[None], SAMPLE_RATE, freq_low=60, freq_high=400)[0]
    f0 = f0[(f0 > 60) & (f0 < 400)]
    return float(f0.median()) if f0.numel() else float("nan")


def bench_perturbations(seconds: float, repeats: int, speech_dir: str) -> list[dict]:
    x, what = test_clip(seconds, speech_dir)
    print(f"perturbations on {seconds:.0f} s of {what}, 1 thread, median of {repeats}")
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    recipe, channel = P.load_recipe("default"), P.load_recipe("channel")
    seeds = iter(range(10**9))
    cases = [
        ("speed 1.137", lambda: P.speed(x, 1.137), lambda: AF.speed(x[None], SAMPLE_RATE, 1.137), seconds),
        ("tempo 0.9 (WSOLA)", lambda: P.tempo(x, 0.9), None, seconds),
        ("pitch +2 st", lambda: P.pitch_shift(x, 2.0), "pitch", seconds),
        ("pitch -3 st", lambda: P.pitch_shift(x, -3.0), None, seconds),
        ("gain -6 dB", lambda: P.gain(x, -6.0), None, seconds),
        (
            "noise white 10 dB",
            lambda: P.add_noise(x, P.colored_noise(x.numel(), "white", gen()), 10.0),
            None,
            seconds,
        ),
        (
            "noise pink 10 dB",
            lambda: P.add_noise(x, P.colored_noise(x.numel(), "pink", gen()), 10.0),
            None,
            seconds,
        ),
        (
            "noise brown 10 dB",
            lambda: P.add_noise(x, P.colored_noise(x.numel(), "brown", gen()), 10.0),
            None,
            seconds,
        ),
        (
            "reverb rt60 0.8 s",
            lambda: P.reverberate(x, P.synthetic_rir(0.8, 3.0, gen())),
            lambda: AF.fftconvolve(x, P.synthetic_rir(0.8, 3.0, gen())),
            seconds,
        ),
        ("telephone", lambda: P.telephone(x), None, seconds),
        ("codec mu-law", lambda: P.codec(x, "mu-law"), None, seconds),
        ("codec a-law", lambda: P.codec(x, "a-law"), None, seconds),
        ("bandlimit 3217 Hz", lambda: P.bandlimit(x, 3217.0), None, seconds),
        ("bandlimit 7000 Hz", lambda: P.bandlimit(x, 7000.0), None, seconds),
        ("formant alpha 0.9", lambda: P.formant(x, 0.9), None, seconds),
        ("formant alpha 1.1", lambda: P.formant(x, 1.1), None, seconds),
        ("default recipe", lambda: P.perturb(x, recipe, next(seeds)), None, seconds),
        ("channel recipe", lambda: P.perturb(x, channel, next(seeds)), None, seconds),
    ]
    rows = []
    for name, ours, baseline, audio in cases:
        wall, cpu = rate(ours, audio, repeats)
        row = {"generator": name, "x_real_time": wall, "x_real_time_cpu": cpu}
        if baseline == "pitch":
            # torchaudio's pitch_shift is slower than real time: time it on a 1 s excerpt once.
            short = x[:SAMPLE_RATE]
            t0 = time.perf_counter()
            AF.pitch_shift(short[None], SAMPLE_RATE, 2)
            row["baseline"] = "torchaudio.functional.pitch_shift (1 s excerpt)"
            row["baseline_x_real_time"] = 1.0 / (time.perf_counter() - t0)
        elif baseline is not None:
            row["baseline"] = "torchaudio.functional." + (
                "speed" if name.startswith("speed") else "fftconvolve"
            )
            row["baseline_x_real_time"] = rate(baseline, audio, repeats)[0]
        rows.append(row)
    # Does the fast pitch shift move the voice's pitch by the requested ratio on this clip?
    f0 = median_f0(x)
    for st in (-3.0, 2.0):
        ratio = median_f0(P.pitch_shift(x, st)) / f0
        print(
            f"  pitch {st:+.0f} st: median F0 ratio {ratio:.3f} (requested {2 ** (st / 12):.3f}), duration kept exactly"
        )
    return rows


def bench_tts(repeats: int) -> list[dict]:
    """Each installed engine through data_prep.candidates.tts, process start included (its measure_speed)."""
    rows = []
    for name in tts.ENGINES:
        engine = tts.get_engine(name)
        if not engine.available():
            print(f"TTS {name}: not available here, skipped")
            continue
        voices = engine.voices()[:3]
        engine.synthesize(SENTENCES[0], voices[0], 0)  # warm-up: page cache, a model load
        texts = (SENTENCES * repeats)[: max(len(SENTENCES), 2 * repeats)]
        rep = tts.measure_speed(engine, texts, voices)
        rows.append(
            {
                "generator": f"tts {name} ({len(voices)} of {len(engine.voices())} voices)",
                "target": TTS_TARGETS.get(name),
                "x_real_time": rep.x_real_time,
                "x_real_time_cpu": rep.x_real_time_cpu,
                "failures": rep.failures,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the perturbed clip")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per generator (median reported)")
    ap.add_argument(
        "--speech_dir", default="", help="folder of 16 kHz FLAC speech to perturb (default: a synthetic tone)"
    )
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(1)  # per-core figures: one shard runs on one core

    rows = bench_perturbations(args.seconds, args.repeats, args.speech_dir)
    tts_rows = bench_tts(args.repeats)
    load = os.getloadavg()[0]
    print(f"\nload average {load:.1f} on {os.cpu_count()} cores (wall figures drop under others' load)")
    print(f"{'generator':30s} {'x RT wall':>10s} {'x RT cpu':>9s} {'target':>7s}  baseline (wall)")
    for row in rows + tts_rows:
        target = row.setdefault("target", PERTURB_TARGET)
        row["meets_target"] = (
            None if target is None else max(row["x_real_time"], row["x_real_time_cpu"]) >= target
        )
        base = ""
        if "baseline" in row:
            base = f"{row['baseline_x_real_time']:.3g}x ({row['baseline']}); ours {row['x_real_time'] / row['baseline_x_real_time']:.1f}x faster"
        flag = {True: "ok", False: "BELOW", None: ""}[row["meets_target"]]
        goal = "-" if target is None else f"{target:.0f}x"
        print(
            f"{row['generator']:30s} {row['x_real_time']:9.0f}x {row['x_real_time_cpu']:8.0f}x {goal:>7s} {flag:5s} {base}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows + tts_rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
