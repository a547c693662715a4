"""TTS speed on one core: audio seconds produced per wall second, process start included.

    python bench/tts_speed.py [--texts 20] [--voices 8] [--engines espeak-ng flite ...] [--hf-model ID] [--json out.json]

"per call" is what the generate stage gets from ``data_prep.candidates.tts``: one engine process per
utterance (start, synthesis, WAV through a pipe, parsing). "engine alone" speaks the same texts
in one call, so the process is started once: the engine's own speed, the ceiling for per call.
Both are measured on wall time and on CPU time (this process plus the engine processes); on a
machine shared with other jobs the wall figure drops, the CPU figure is what one free core does.
Engines that are not installed are skipped; ``hf`` runs only with ``--hf-model``.
Target (issue 3): espeak-ng and flite >= 50x real time per core, process start included.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.candidates import tts  # noqa: E402

TARGET = 50.0
TARGET_ENGINES = ("espeak-ng", "flite")
# Harvard sentences (IEEE 1969, lists 1-2): phonetically balanced, public domain, 2-3 s each.
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
]


def pick_voices(voices: list[str], n: int, seed: int) -> list[str]:
    """All voices when there are at most ``n``, else ``n`` drawn without replacement (seeded)."""
    if len(voices) <= n:
        return voices
    idx = np.random.default_rng(seed).choice(len(voices), size=n, replace=False)
    return [voices[i] for i in sorted(idx)]


def bench_engine(engine: tts.Engine, texts: list[str], n_voices: int, seed: int) -> list[dict]:
    voices = pick_voices(engine.voices(), n_voices, seed)
    engine.synthesize(texts[0], voices[0], seed)  # warm-up: page cache, or a model load (piper, hf)
    # Engines with a handful of voices get a row per voice (flite's kal is ~5x faster than its
    # clustergen voices); espeak-ng's hundreds of voices get one row over a sample of them.
    groups = [[v] for v in voices] if len(engine.voices()) <= n_voices else [voices]
    rows = []
    for group in groups:
        per_call = tts.measure_speed(engine, texts, group, seed)
        alone = tts.measure_speed(engine, [" ".join(texts)], group[:1], seed)
        label = group[0] if len(group) == 1 else f"{len(group)} of {len(engine.voices())} voices"
        rows.append(
            {
                "engine": engine.name,
                "voices": label,
                "per_call": per_call.to_dict(),
                "engine_alone": alone.to_dict(),
                "target": TARGET if engine.name in TARGET_ENGINES else None,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--texts", type=int, default=20, help=f"sentences per measurement (at most {len(SENTENCES)})"
    )
    ap.add_argument(
        "--voices", type=int, default=8, help="voices per engine (a seeded sample when it has more)"
    )
    ap.add_argument("--engines", nargs="*", default=list(tts.ENGINES), choices=tts.ENGINES)
    ap.add_argument("--hf-model", default="", help="Hub id or folder for the hf engine (skipped without it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    texts = SENTENCES[: max(1, args.texts)]

    rows: list[dict] = []
    for name in args.engines:
        options = {"model": args.hf_model} if name == "hf" else {}
        engine = tts.get_engine(name, **options)
        if not engine.available():
            print(f"{name}: not available, skipped ({engine.install_hint})")
            continue
        rows.extend(bench_engine(engine, texts, args.voices, args.seed))

    print(f"\n{len(texts)} sentences, one worker; x real time = audio seconds / seconds")
    header = f"{'engine':10s} {'voices':22s} {'audio s':>8s} {'per call wall':>14s} {'per call cpu':>13s} {'alone wall':>11s} {'alone cpu':>10s}  target"
    print(header)
    for r in rows:
        pc, al = r["per_call"], r["engine_alone"]
        verdict = ""
        if r["target"]:
            verdict = f"{r['target']:.0f}x: wall {'ok' if pc['x_real_time'] >= r['target'] else 'BELOW'}, "
            verdict += f"cpu {'ok' if pc['x_real_time_cpu'] >= r['target'] else 'BELOW'}"
        fails = f" ({pc['failures']} failed)" if pc["failures"] else ""
        print(
            f"{r['engine']:10s} {r['voices']:22s} {pc['audio_seconds']:8.1f} {pc['x_real_time']:13.0f}x "
            f"{pc['x_real_time_cpu']:12.0f}x {al['x_real_time']:10.0f}x {al['x_real_time_cpu']:9.0f}x  {verdict}{fails}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
