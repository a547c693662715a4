"""Stage `prepare`: sources -> canonical 16 kHz datasets (`target_train`, `target_test`, `source`).

    python -m data_prep.prepare --config configs/demo.yaml [--key value ...]

Writes `<output_dir>/data/`: a `DatasetDict` (`save_to_disk`), `report.json` (kept, dropped by
reason, hours per split), `protected_texts.json` (the leakage guard: texts of every test split,
which later stages must never synthesize) and `config.yaml` (the resolved config).

Every utterance is decoded and checked here, so later stages never meet a bad file: each problem
is either a clear error (`on_error: raise`) or a logged, counted skip (`on_error: skip`).
"""

from __future__ import annotations

import io
import logging
import math
import time
import unicodedata
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from datasets import Dataset, DatasetDict
from torchcodec.decoders import AudioDecoder
from tqdm.auto import tqdm

from core import files, paths, schema
from core.config import run_stage, save_resolved
from core.locks import stage_lock
from core.paths import ExperimentPaths
from core.seeding import stream_rng
from data_prep.leakage import LeakageGuard, normalize_text
from data_prep.sources import RawUtterance, SourceError, read_source, role_origins

log = logging.getLogger(__name__)

# How to fix each kind of bad input; the message names the file, this names the fix.
FIXES = {
    "missing_file": "fix the path in the manifest or remove the row",
    "invalid_path": "put the audio file's path (relative to the manifest) in the row, or remove the row",
    "path_outside_folder": "move the file into the manifest's folder (symlinks there are followed), or set "
    "`prepare.allow_outside_paths: true` if you trust every path in the manifest",
    "corrupt_audio": "re-encode it (e.g. `ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`) or remove it",
    "empty_audio": "the file holds no samples (or fewer than `min_duration`); remove it or lower `min_duration`",
    "non_finite": "the audio holds NaN or infinite samples; re-export it from the original recording",
    "empty_transcript": "give it a transcript or remove the row",
    "undecodable_transcript": "the transcript is not valid UTF-8; re-save the source's text as UTF-8",
    "too_long": "split it into shorter utterances or raise `max_duration`",
    "duplicate_id": "ids must be unique; rename one of the rows",
    "no_speech": "the prompt is a tone or silence with no words (expected for some corpora)",
    "no_transcript": "the corpus lists the prompt without its words; it cannot be scored (expected for some corpora)",
}


# Skips a source announces itself (not a defect of the user's data): never an error.
EXPECTED_SKIPS = {"no_speech", "no_transcript"}


class BadInput(ValueError):
    def __init__(self, reason: str, where: str, detail: str = ""):
        self.reason, self.where = reason, where
        super().__init__(
            f"{where}: {reason.replace('_', ' ')}{f' ({detail})' if detail else ''}; fix: {FIXES[reason]}"
        )


# Sample rates a real recording can have (768 kHz: the highest PCM rate sold). A header outside
# them is damage: saying so is clearer than resampling 3 samples at 200 Hz into a 15 ms "utterance".
PLAUSIBLE_RATES = (1_000, 768_000)


def plain_decode_reason(path: str | None, data: bytes | None) -> str:
    """What a failed decode means to the user. The decoder's own words (torchcodec's C++ source
    path, ffmpeg's `Invalid data found when processing input`) go to the DEBUG log instead."""
    try:
        size = len(data) if data is not None else Path(path).stat().st_size
    except OSError:
        return "not readable (permission or I/O error)"
    if size == 0:
        return "the file is empty (0 bytes)"
    return "not a decodable audio file: truncated, corrupt or not audio"


def is_file(path: str) -> bool:
    """Path.is_file that answers False, not an exception, for names the OS refuses (too long, NUL)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def decode_file(path: str | None, data: bytes | None) -> tuple[np.ndarray, int]:
    """(channels-first float32 samples, rate). soundfile handles WAV/FLAC/OGG; anything else
    (mp3, m4a, ...) goes through torchcodec's ffmpeg decoder."""
    try:
        samples, rate = sf.read(
            io.BytesIO(data) if data is not None else path, dtype="float32", always_2d=True
        )
        return samples.T, rate
    except sf.LibsndfileError:
        decoded = AudioDecoder(data if data is not None else path).get_all_samples()
        return decoded.data.numpy().astype(np.float32), decoded.sample_rate


# torchaudio's resampler builds a dense (16000/g) x (rate/g) kernel, g = gcd(rate, 16000): tiny for
# the usual rates (44.1 kHz: 160 x 441) but 16000 x 22051 taps (6 GB and 40 s on this 2-core box)
# for a 22051 Hz header, which a flipped bit or an odd recorder produces. Above this size the
# ratio is replaced by the nearest fraction with a denominator <= 1000: duration and pitch off by
# at most 0.05% over 1 kHz..768 kHz, and a kernel of at most 16 M taps (64 MB). The usual rates
# stay exact.
MAX_DENSE_KERNEL = 1_000_000


def resample_ratio(rate: int) -> tuple[int, int]:
    """(from, to) rates for torchaudio: exact when its kernel is small, else a close fraction."""
    g = math.gcd(rate, schema.SAMPLE_RATE)
    if (rate // g) * (schema.SAMPLE_RATE // g) <= MAX_DENSE_KERNEL:
        return rate, schema.SAMPLE_RATE
    ratio = Fraction(schema.SAMPLE_RATE, rate).limit_denominator(1000)
    return ratio.denominator, ratio.numerator


def to_canonical_audio(samples: np.ndarray, rate: int) -> np.ndarray:
    """Channels-first audio at any rate -> mono float32 at 16 kHz (mean over channels)."""
    mono = samples.mean(axis=0) if samples.ndim == 2 else samples
    if rate == schema.SAMPLE_RATE:
        return mono.astype(np.float32)
    orig, new = resample_ratio(int(rate))
    return AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), orig, new).numpy()


def clean_text(text, where: str) -> str:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadInput("undecodable_transcript", where, str(e)) from e
    if text is None or (isinstance(text, float) and math.isnan(text)):
        raise BadInput("empty_transcript", where)
    text = unicodedata.normalize("NFC", str(text))
    text = " ".join(text.split())
    if not text:
        raise BadInput("empty_transcript", where)
    return text


def load_utterance(raw: RawUtterance, args) -> dict:
    """Decode and check one utterance; returns a canonical row or raises `BadInput`."""
    where = raw.origin_file or raw.path or raw.id
    if raw.skip_reason:
        raise BadInput(raw.skip_reason, where, raw.skip_detail)
    text = clean_text(raw.text, where)
    if raw.audio_bytes is None and not is_file(raw.path):
        raise BadInput("missing_file", where)
    try:
        samples, rate = decode_file(raw.path or None, raw.audio_bytes)
    except Exception as e:  # noqa: BLE001 - any decoder failure means the same thing to the user
        log.debug("%s: decoder error %s: %s", where, type(e).__name__, e)
        raise BadInput("corrupt_audio", where, plain_decode_reason(raw.path, raw.audio_bytes)) from e
    if not PLAUSIBLE_RATES[0] <= rate <= PLAUSIBLE_RATES[1]:
        raise BadInput("corrupt_audio", where, f"sample rate {rate} Hz in its header is not plausible")
    if samples.size == 0 or samples.shape[-1] / rate < args.min_duration:
        raise BadInput("empty_audio", where, f"{samples.shape[-1]} samples")
    if not np.isfinite(samples).all():
        raise BadInput("non_finite", where)
    duration = samples.shape[-1] / rate
    if duration > args.max_duration:
        raise BadInput("too_long", where, f"{duration:.1f} s > max_duration {args.max_duration} s")
    audio = to_canonical_audio(samples, rate)
    return schema.make_row(
        id=raw.id,
        samples=audio,
        text=text,
        speaker=raw.speaker,
        accent=raw.accent,
        origin="real",
        generator={
            "source": args.source,
            "file": raw.path,
            "original_rate": rate,
            "original_channels": samples.shape[0],
        },
    )


def group_key(split_by: str):
    return {
        "text": lambda r: normalize_text(r["text"]),
        "speaker": lambda r: r["speaker"],
        "utterance": lambda r: r["id"],
    }[split_by]


def seeded_groups(rows: list[dict], key, rng: np.random.Generator) -> list:
    """The distinct groups of ``rows`` in a random order (sorted first, so the order does not
    depend on the listing's)."""
    groups = sorted({key(r) for r in rows})
    return [groups[i] for i in rng.permutation(len(groups))]


def split_target(
    rows: list[dict], split_by: str, test_fraction: float, rng: np.random.Generator
) -> tuple[list[dict], list[dict]]:
    """Hold out whole groups (texts, speakers or utterances) so nothing of target_test is seen in
    training: with `text`, every copy of a sentence lands on the same side."""
    key = group_key(split_by)
    groups = seeded_groups(rows, key, rng)
    n_test = int(round(test_fraction * len(groups)))
    if 0 < test_fraction < 1 and len(groups) > 1:
        n_test = min(max(n_test, 1), len(groups) - 1)  # both splits non-empty when possible
    test_groups = set(groups[:n_test])
    train = [r for r in rows if key(r) not in test_groups]
    test = [r for r in rows if key(r) in test_groups]
    return train, test


def take_groups(
    rows: list[dict], split_by: str, n: int, rng: np.random.Generator
) -> tuple[list[dict], list[dict]]:
    """Whole groups, in a seeded order, until at least ``n`` utterances are taken (all when fewer
    remain); returns (taken, rest). Used to carve target_dev out of the held-out side (out of
    target_train when the data names its own test split)."""
    if n <= 0:
        return [], rows
    key = group_key(split_by)
    chosen: set = set()
    size = Counter(key(r) for r in rows)
    taken = 0
    for g in seeded_groups(rows, key, rng):
        if taken >= n:
            break
        chosen.add(g)
        taken += size[g]
    return [r for r in rows if key(r) in chosen], [r for r in rows if key(r) not in chosen]


def cap(rows: list[dict], n: int, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """At most ``n`` rows (a seeded choice, listing order kept; 0: all) and the rows left out."""
    if n <= 0 or len(rows) <= n:
        return rows, []
    keep = set(rng.choice(len(rows), size=n, replace=False).tolist())
    return [r for i, r in enumerate(rows) if i in keep], [r for i, r in enumerate(rows) if i not in keep]


def unused_texts(left_out: list[dict], guard: LeakageGuard) -> tuple[list[str], dict[str, int]]:
    """The distinct transcripts of rows left out by the caps, less the protected (dev/test) ones:
    with split_by speaker or utterance a left-out row can share its text with a test row."""
    seen: set[str] = set()
    texts: list[str] = []
    counts = {"left_out": len(left_out), "protected": 0, "duplicate": 0}
    for r in left_out:
        norm = normalize_text(r["text"])
        if guard.is_protected(r["text"]):
            counts["protected"] += 1
        elif norm in seen:
            counts["duplicate"] += 1
        else:
            seen.add(norm)
            texts.append(r["text"])
    counts["kept"] = len(texts)
    return texts, counts


def capped(rows: list[dict], which: str, args, seed, dropped: Counter, left_out: list[dict]) -> list[dict]:
    """``cap`` with max_<which>_utterances: the rows left out are counted in ``dropped`` and
    collected in ``left_out`` (their transcripts can become text only, prepare.unused_texts)."""
    kept, left = cap(
        rows, getattr(args, f"max_{which}_utterances"), stream_rng(seed, "prepare", "cap", which)
    )
    dropped[f"over_max_{which}_utterances"] = len(left)
    left_out += left
    return kept


def random_splits(
    target, source, args, seed, dropped: Counter, left_out: list[dict]
) -> dict[str, list[dict]]:
    """target_test (and target_dev) held out of the target by seeded whole groups."""
    train, test = split_target(
        target, args.split_by, args.test_fraction, stream_rng(seed, "prepare", "split")
    )
    dev, test = take_groups(test, args.split_by, args.dev_utterances, stream_rng(seed, "prepare", "dev"))
    if args.dev_utterances and not test:
        raise ValueError(
            f"prepare: dev_utterances {args.dev_utterances} took every held-out utterance ({len(dev)}); "
            "lower dev_utterances or raise test_fraction"
        )
    train = capped(train, "train", args, seed, dropped, left_out)
    test = capped(test, "test", args, seed, dropped, left_out)
    return {"target_train": train, "target_dev": dev, "target_test": test, "source": source}


def data_splits(
    rows, role_of: dict[str, str], is_target, args, seed, dropped: Counter, left_out: list[dict]
) -> dict[str, list[dict]]:
    """The splits the data names (split_column, role_sources), not re-split: the target of each role
    kept, the rest of target_train to `source` and the rest of dev/test dropped (its speakers or
    texts must not reach training through `source`)."""
    by_role: dict[str, list[dict]] = {}
    for r in rows:
        by_role.setdefault(role_of[r["id"]], []).append(r)
    train = [r for r in by_role.get("target_train", []) if is_target(r)]
    source = by_role.get("source", []) + [r for r in by_role.get("target_train", []) if not is_target(r)]
    held = {
        role: [r for r in by_role.get(role, []) if is_target(r)] for role in ("target_dev", "target_test")
    }
    dropped["non_target_held_out"] = sum(len(by_role.get(k, [])) - len(v) for k, v in held.items())
    dev, test = held["target_dev"], held["target_test"]
    if args.dev_utterances and "target_dev" not in by_role:
        # out of train, not test: the official test split stays as published
        dev, train = take_groups(
            train, args.split_by, args.dev_utterances, stream_rng(seed, "prepare", "dev")
        )
    elif args.dev_utterances:
        log.warning("prepare: dev_utterances ignored: the data names its own target_dev")
    test = capped(test, "test", args, seed, dropped, left_out)
    # Speaker-disjoint official splits still share short texts ("yes", "thank you"): a training row
    # saying a dev/test text would make those items easy, so it goes, counted.
    protected = {normalize_text(r["text"]) for r in dev + test} if args.protect_test_texts else set()
    kept = {}
    for name, part in (("train", train), ("source", source)):
        kept[name] = [r for r in part if normalize_text(r["text"]) not in protected]
        dropped["refused_protected_text"] += len(part) - len(kept[name])
    train = capped(kept["train"], "train", args, seed, dropped, left_out)
    return {"target_train": train, "target_dev": dev, "target_test": test, "source": kept["source"]}


@stage_lock("prepare", lambda run, args: ExperimentPaths.of(run.output_dir).data)
def prepare(run, args) -> dict:
    """Run the stage; returns the report it writes."""
    t0 = time.time()
    out_dir = ExperimentPaths.of(run.output_dir).data
    rows: list[dict] = []
    dropped: Counter = Counter()
    edited: Counter = Counter()  # kept utterances whose transcript the reader changed, by what
    examples: dict[str, list[str]] = {}
    seen: set[str] = set()
    role_of: dict[str, str] = {}
    listed, role_listed = 0, Counter()
    listing = read_source(args)
    for raw in tqdm(listing, desc=f"prepare {args.source}", unit="utt"):
        if args.limit and listed >= args.limit:
            break
        listed += 1
        role_listed[raw.role] += 1
        if raw.role == "skip":  # left out by split_map: not worth decoding
            dropped["split_not_used"] += 1
            continue
        try:
            if raw.id in seen:
                raise BadInput("duplicate_id", raw.origin_file or raw.id, f"id {raw.id!r}")
            row = load_utterance(raw, args)
        except BadInput as e:
            if args.on_error == "raise" and e.reason not in EXPECTED_SKIPS:
                raise
            dropped[e.reason] += 1
            examples.setdefault(e.reason, []).append(str(e))
            log.warning("skipped %s", e)
            continue
        seen.add(raw.id)
        role_of[raw.id] = raw.role
        rows.append(row)
        if raw.text_edit:
            edited[raw.text_edit] += 1
    if not rows:
        first = next(iter(examples.values()), [""])[0]
        raise SourceError(
            f"no usable utterance in source {args.source} {args.path!r}; dropped: {dict(dropped)}"
            + (f"; e.g. {first}" if first else "")
        )

    wanted = {"speaker": set(args.target_speakers), "accent": set(args.target_accents)}
    for key, values in wanted.items():
        unknown = values - {r[key] for r in rows}
        if unknown:
            raise ValueError(
                f"target_{key}s {sorted(unknown)} not found; {key}s in the source: {sorted({r[key] for r in rows})}"
            )

    def is_target(r: dict) -> bool:
        if not any(wanted.values()):
            return True
        return r["speaker"] in wanted["speaker"] or r["accent"] in wanted["accent"]

    origins = role_origins(args)
    left_out: list[dict] = []  # rows the caps left out
    if origins:
        named = data_splits(rows, role_of, is_target, args, run.seed, dropped, left_out)
        log.info("prepare: splits from the data (%s); test_fraction is ignored", origins)
    else:
        named = random_splits(
            [r for r in rows if is_target(r)],
            [r for r in rows if not is_target(r)],
            args,
            run.seed,
            dropped,
            left_out,
        )
    if named["source"] and not args.keep_source:
        dropped["non_target"] += len(named["source"])
        named["source"] = []
    dropped = +dropped  # the reasons that removed nothing go

    # An empty split is left out (datasets cannot reload a saved empty split); the report names it.
    splits = {k: v for k, v in named.items() if v}
    empty = [k for k in ("target_train", "target_test") if not named[k]]
    if empty:
        why = f"roles {origins}" if origins else f"test_fraction {args.test_fraction}"
        log.warning("prepare: split(s) %s are empty (%s) and are not written", empty, why)
    features = schema.features()
    dd = DatasetDict(
        {
            k: Dataset.from_dict({c: [r[c] for r in v] for c in features}, features=features)
            for k, v in splits.items()
        }
    )

    # dev texts are protected too: a synthesized dev sentence would flatter checkpoint selection
    held_out = named["target_dev"] + named["target_test"]
    guard = LeakageGuard([r["text"] for r in held_out] if args.protect_test_texts else [])
    if not args.protect_test_texts:
        log.warning("prepare: protect_test_texts is off: later stages may synthesize target_test texts")
    text_only, text_only_counts = unused_texts(left_out, guard) if args.unused_texts else ([], None)
    report = {
        "stage": "prepare",
        "source": args.source,
        "path": args.path,
        "language": args.language,
        "listed": listed,
        "kept": {k: len(v) for k, v in splits.items()},
        "hours": {k: round(sum(r["duration"] for r in v) / 3600, 4) for k, v in splits.items()},
        "speakers": {k: sorted({r["speaker"] for r in v}) for k, v in splits.items()},
        "dropped": dict(dropped),
        "dropped_examples": {k: v[:5] for k, v in examples.items()},
        "transcripts_edited": dict(edited),
        "empty_splits": empty,
        "split_by": args.split_by,
        # where each role came from, and how many rows it listed (before checks and target selection)
        "splits_from_data": {
            role: {"from": where, "listed": role_listed[role]} for role, where in origins.items()
        },
        "test_fraction": "ignored: the splits come from the data" if origins else args.test_fraction,
        "protected_texts": len(guard),
        "unused_texts": text_only_counts,
        "seconds": round(time.time() - t0, 2),
    }
    with files.atomic_dir(out_dir) as tmp:
        dd.save_to_disk(str(tmp))
        guard.save(tmp / "protected_texts.json")
        if text_only:
            # one sentence a line, as generate.text_corpus: a newline inside a transcript would split it
            lines = (" ".join(t.split()) for t in text_only)
            (tmp / paths.UNUSED_TEXTS).write_text("".join(f"{t}\n" for t in lines), encoding="utf-8")
        files.write_json(report, tmp / "report.json")
        save_resolved(tmp / "config.yaml", "prepare", run, args)
    kept = ", ".join(f"{k} {len(v)} ({report['hours'][k] * 60:.1f} min)" for k, v in splits.items())
    total_drop = sum(dropped.values())
    log.info("prepare: kept %s; dropped %d (%s) -> %s", kept, total_drop, dict(dropped) or "none", out_dir)
    if text_only_counts is not None:
        log.info(
            "prepare: %d transcript(s) of left-out utterances kept as text only -> %s (%s)",
            len(text_only),
            out_dir / paths.UNUSED_TEXTS,
            text_only_counts,
        )
    return report


def main(argv=None):
    try:
        run_stage("prepare", prepare, argv, __doc__)
    except (SourceError, BadInput) as e:
        # Bad input, already explained (file, line, fix): a traceback would only bury the message.
        raise SystemExit(f"prepare: {e}") from None


if __name__ == "__main__":
    main()
