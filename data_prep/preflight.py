"""Preflight: everything that can fail in hour two, checked in a minute before any heavy stage.

    python -m data_prep.preflight --config configs/whisper-small-edacc-gpu.yaml --ngpu 4 [section.key=value ...]
    ./run_finetune.sh --config ... --check                 # the same, then exits

It prints one table (check, ok / warn / FAIL, the detail with the fix) and exits 1 when any
check FAILs. It writes nothing to the experiment folder; it reads headers, metadata and a sample.

Why it lives in data_prep: beyond the core, what it has to know is data_prep's, the source
readers (``sources``), prepare's split rules and the TTS engines, and ``recipe`` may not import
those (``tests/test_architecture.py``) while ``core`` may import neither side. It needs nothing of
``recipe``'s: every section, ``train`` and ``evaluate`` included, comes through ``core.config``
(the sections register themselves), and models load through ``core.checkpoint`` / ``core.asr``,
as the gate's do.

Each check is a small function returning a :class:`Check`; what a later check needs from an
earlier one (the resolved config, the listed utterances, the model's size) travels in
``Check.facts``, and a check whose input is missing is skipped with the reason.
"""

from __future__ import annotations

import argparse
import difflib
import io
import math
import os
import shutil
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import soundfile as sf

from core import config as cfg

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
# Stage sections the checks read; the others (filter, ablation) are only parsed and validated.
SECTIONS = ("prepare", "generate", "filter", "train", "evaluate", "ablation")
OFFLINE_FIX = (
    "run once with network access (it is cached then), or set HF_HUB_OFFLINE=0, "
    "or point {key} at a local copy"
)
# Listing durations reads one header a file (about 0.1-1 ms each); past this many files a seeded
# sample keeps the check inside a minute and the totals are scaled up (the detail says so).
MAX_HEADER_READS = 20_000
# Rows of a Hub dataset whose audio header is read for durations: enough for a mean within a few
# percent, cheap even when every row is a 30-s clip.
HUB_DURATION_SAMPLE = 300
# Rows streamed from a Hub dataset that is not cached (network on): values of speaker/accent and
# durations come from them; a target value missing there is a warning, not a proof.
HUB_STREAM_ROWS = 2_000
# Above this share of transcript characters the CTC vocabulary cannot spell, training learns to
# emit <unk> for real letters: about one character a sentence.
MAX_UNK_SHARE = 0.01


@dataclass
class Check:
    name: str
    status: str  # ok | warn | FAIL | skip
    detail: str
    facts: dict[str, Any] = field(default_factory=dict, repr=False)  # for later checks, not printed


def skipped(name: str, why: str) -> Check:
    return Check(name, SKIP, f"not checked: {why}")


# ---------------------------------------------------------------------------------------------
# 1. config
# ---------------------------------------------------------------------------------------------
def section_argv(config: str, name: str, overrides: Sequence[str], output_dir: str = "") -> list[str]:
    """``--key value`` arguments of one stage, the way run_finetune.sh builds them from
    ``section.key=value`` overrides (``run.*`` goes to every stage)."""
    argv = ["--config", config, *(["--output_dir", output_dir] if output_dir else [])]
    for o in overrides:
        key, _, value = o.partition("=")
        sec, _, k = key.partition(".")
        if sec in ("run", name):
            argv += [f"--{k}", value]
    return argv


def check_config(config: str, overrides: Sequence[str] = (), output_dir: str = "") -> Check:
    """Every section of the file and every override, checked as the stages will (all problems at once)."""
    name = "config"
    problems: list[str] = []
    bad = [
        o
        for o in overrides
        if "=" not in o or o.partition("=")[0].partition(".")[0] not in ("run", *SECTIONS)
    ]
    if bad:
        problems.append(f"override(s) {bad} are not section.key=value with a section of {['run', *SECTIONS]}")
    try:
        cfg.load_yaml(config)
    except cfg.ConfigError as e:
        return Check(name, FAIL, str(e))
    resolved: dict[str, SimpleNamespace] = {}
    run_values: dict[str, Any] = {}
    for sec in SECTIONS:
        try:
            run_values, values = cfg.resolve(sec, section_argv(config, sec, overrides, output_dir))
            resolved[sec] = SimpleNamespace(**values)
        except cfg.ConfigError as e:
            problems += [f"{sec}: {line}" for line in str(e).splitlines()]
        except SystemExit as e:  # argparse's own refusal (e.g. `--max_steps abc`) exits instead of raising
            problems.append(f"{sec}: the command line was refused ({e})")
    problems = list(dict.fromkeys(problems))  # a bad run.* override is reported by every section
    if problems:
        return Check(name, FAIL, "; ".join(problems))
    resolved["run"] = SimpleNamespace(**run_values)
    return Check(
        name, OK, f"{config}: {len(SECTIONS) + 1} sections parse and validate", facts={"sections": resolved}
    )


# ---------------------------------------------------------------------------------------------
# 2. dataset: source, columns, target values
# ---------------------------------------------------------------------------------------------
def closest(value: str, existing: Iterable[str], n: int = 3) -> list[str]:
    """Existing values a misspelled one probably meant: difflib's close matches, then values that
    contain it or are contained in it, case ignored ("Indian English" -> "indian")."""
    existing = sorted({e for e in existing if e})
    folded = {e.casefold(): e for e in existing}
    found = [folded[m] for m in difflib.get_close_matches(value.casefold(), list(folded), n=n, cutoff=0.6)]
    v = value.casefold()
    found += [e for e in existing if e.casefold() in v or v in e.casefold()]
    return list(dict.fromkeys(found))[:n]


def check_targets(
    values: Mapping[str, Iterable[str]], wanted: Mapping[str, Sequence[str]], where: str
) -> Check:
    """Every ``target_speakers`` / ``target_accents`` value exists among the source's values."""
    name = "target values"
    missing = []
    found_total = []
    for role, want in wanted.items():
        have = set(values.get(role, ()))
        for w in want:
            if w in have:
                found_total.append(w)
                continue
            near = closest(w, have)
            hint = (
                f"closest: {', '.join(map(repr, near))}"
                if near
                else f"{len(have)} {role}s, e.g. {sorted(have)[:5]}"
            )
            missing.append(f"target_{role}s {w!r} is not in {where} ({hint})")
    if missing:
        return Check(name, FAIL, "; ".join(missing) + "; fix the value in prepare.target_*")
    if not found_total:
        return Check(name, OK, "no target_speakers/target_accents: every utterance is target")
    return Check(name, OK, f"{', '.join(map(repr, found_total))} found in {where}")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """Whether the Hub may not be reached: huggingface_hub's constant (read at its import) or the
    environment now (set after that import, as tests and wrappers do)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or any(
        _truthy(os.environ.get(k)) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_dataset_cached(repo_id: str) -> bool:
    """Whether a Hub dataset is in the hub cache or in datasets' own (converted Arrow) cache."""
    import datasets
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
    arrow = Path(datasets.config.HF_DATASETS_CACHE)
    names = {repo_id.replace("/", "___"), repo_id.replace("/", "___").lower()}
    return hub.is_dir() or any((arrow / n).is_dir() for n in names)


@dataclass
class Row:
    """What the preflight knows of one utterance without decoding it."""

    id: str
    text: str
    speaker: str
    accent: str
    duration: float | None  # seconds from the header; None: unknown (not a WAV/FLAC header, missing)
    problem: str = ""  # why prepare will skip it (missing_file, empty_transcript, ...)
    role: str = ""  # the role the data gives it (split_column, role_sources); "" when prepare splits


def audio_duration(path: str | None = None, data: bytes | None = None) -> float | None:
    """Seconds from the audio header alone (soundfile: WAV, FLAC, OGG); None when it has none we read."""
    try:
        info = sf.info(io.BytesIO(data) if data is not None else path)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError):
        return None
    return info.frames / info.samplerate if info.samplerate else None


def mark_duplicates(rows: Sequence[Row]) -> None:
    """A second row with an id already seen is prepare's duplicate_id skip (rows split_map leaves
    out are never looked at)."""
    seen: set[str] = set()
    for r in rows:
        if r.problem or r.role == "skip":
            continue
        if r.id in seen:
            r.problem = "duplicate_id"
        seen.add(r.id)


def _raw_rows(records: Sequence, sample: int, seed: int) -> tuple[list[Row], float]:
    """Rows of listed records (durations from headers; a seeded sample of them past ``sample``),
    and the factor that scales the sample's totals to the whole source."""
    from core.seeding import stream_rng
    from data_prep.prepare import BadInput, clean_text, is_file

    records = list(records)
    scale = 1.0
    if len(records) > sample:
        pick = sorted(stream_rng(seed, "preflight", "sample").choice(len(records), sample, replace=False))
        scale = len(records) / sample
        records = [records[i] for i in pick]
    rows = []
    for r in records:
        problem = r.skip_reason
        try:
            text = clean_text(r.text, r.id)
        except BadInput as e:
            text, problem = "", problem or e.reason
        duration = None
        if not problem and r.audio_bytes is None and not is_file(r.path):
            problem = "missing_file"
        elif not problem:
            duration = audio_duration(r.path or None, r.audio_bytes)
        rows.append(Row(r.id, text, r.speaker, r.accent, duration, problem, r.role))
    mark_duplicates(rows)
    return rows, scale


def _local_tables(prep) -> dict[str, str]:
    """{role: manifest or folder} of a csv/jsonl/audiofolder source; role "" when one path holds every row."""
    from data_prep.prepare_args import parse_role_sources

    return parse_role_sources(prep.role_sources) or {"": prep.path}


def _table_columns(prep, path: str, role: str) -> tuple[str, list[str]]:
    """(what is wrong with one manifest's columns, "" when nothing; notes on optional columns it lacks)."""
    from data_prep import sources

    try:
        where, header = sources.table_header(path, prep.source, prep.encoding)
    except (sources.SourceError, OSError) as e:
        return (f"role {role}: {e}; fix prepare.role_sources ({role}={path})" if role else str(e)), []
    audio_col = "file_name" if prep.source == "audiofolder" else prep.audio_column
    required = {"audio": audio_col, "text": prep.text_column}
    optional = {"speaker": prep.speaker_column, "accent": prep.accent_column, "id": prep.id_column}
    for key, values in (("speaker", prep.target_speakers), ("accent", prep.target_accents)):
        if values:
            required[key] = optional.pop(key)
    if prep.split_by == "speaker":
        required["speaker"] = optional.pop("speaker", prep.speaker_column)
    if prep.split_column:
        required["split"] = prep.split_column
    absent = [
        f"{key} column {col!r} (prepare.{key}_column)" for key, col in required.items() if col not in header
    ]
    if absent:
        return (
            f"{where}: no {', no '.join(absent)}; columns found: {header}; "
            "set the prepare.*_column keys to the file's column names"
        ), []
    meaning = {"speaker": "one speaker", "accent": "empty accents", "id": "ids from file names"}
    notes = [
        f"no {k} column {col!r}: {meaning[k]}" for k, col in optional.items() if col and col not in header
    ]
    return "", notes


def _role_counts(rows: Iterable[Row]) -> str:
    counts = Counter(r.role for r in rows if r.role)
    return ", ".join(f"{role} {n}" for role, n in sorted(counts.items()))


def check_source(prep, seed: int = 0) -> Check:
    """The source resolves and has the named columns (in every role's manifest, Hub split or
    folder); lists its utterances (cheaply) for the next checks."""
    from data_prep import sources

    name = "dataset source"
    if prep.source == "hub":
        return _check_hub(prep, seed)
    tables = _local_tables(prep) if prep.source in sources.LOCAL_SOURCES else {}
    where = " + ".join(p for p in tables.values() if p) or prep.path or prep.source
    # Target values are checked by check_targets, which names the closest values; the reader's
    # own check would stop at the first and list every value.
    listing_args = SimpleNamespace(**{**vars(prep), "target_speakers": [], "target_accents": []})
    notes: list[str] = []
    for role, path in tables.items():
        if path:
            problem, more = _table_columns(prep, path, role)
            if problem:
                return Check(name, FAIL, problem)
            notes += more
    try:
        records = list(sources.read_source(listing_args))
    except sources.SourceError as e:
        return Check(name, FAIL, str(e))
    if not records:
        return Check(name, FAIL, f"{where}: lists no utterance")
    rows, scale = _raw_rows(records, MAX_HEADER_READS, seed)
    values = {"speaker": {r.speaker for r in records}, "accent": {r.accent for r in records}}
    detail = f"{prep.source} {where}: {len(records)} utterances listed, {len(values['speaker'])} speakers"
    if any(r.role for r in records):
        detail += f" (by role: {_role_counts(Row('', '', '', '', None, role=r.role) for r in records)})"
    if scale > 1:
        detail += f"; durations from a seeded sample of {len(rows)} headers, totals scaled"
    status = OK  # a missing optional column has a documented meaning (one speaker, no accent): a note
    return Check(
        name,
        status,
        "; ".join([detail, *dict.fromkeys(notes)]),
        facts={"rows": rows, "scale": scale, "values": values, "where": where, "complete": True},
    )


def _hub_roles(prep) -> list[tuple[str, str]]:
    """(role, split) pairs a Hub source reads: each role's own split (role_sources), else
    hub_split with role "" (the rows' roles then come from split_column, or prepare splits)."""
    from data_prep.prepare_args import parse_role_sources

    return list(parse_role_sources(prep.role_sources).items()) or [("", prep.hub_split)]


def _load_hub_split(prep, split: str):
    """(the split's rows, complete, its size or None): the whole split when it is local or cached,
    else a stream (network on) whose size comes from the dataset's info."""
    from datasets import load_dataset

    if Path(prep.path).exists() or hub_offline():
        ds = load_dataset(prep.path, prep.hub_config or None, split=split)
        return ds, True, len(ds)
    ds = load_dataset(prep.path, prep.hub_config or None, split=split, streaming=True)
    info = ds.info.splits.get(split) if ds.info and ds.info.splits else None
    return ds, False, info.num_examples if info else None


def _missing_split(prep, role: str, split: str) -> str:
    """Why ``split`` did not load when the dataset has no such split, naming those it has; ""
    when it has it or its splits cannot be listed (the load error says more then)."""
    from datasets import get_dataset_split_names

    try:
        names = get_dataset_split_names(prep.path, prep.hub_config or None)
    except Exception:  # noqa: BLE001 - listing is a better message, not a requirement
        return ""
    if split in names:
        return ""
    key = f"prepare.role_sources ({role}={split})" if role else "prepare.hub_split"
    return f"Hub dataset {prep.path} has no split {split!r}; its splits: {names}; fix {key}"


def _hub_columns(prep) -> dict[str, str]:
    cols = {
        "audio": prep.audio_column,
        "text": prep.text_column,
        "speaker": prep.speaker_column,
        "accent": prep.accent_column,
        "id": prep.id_column,
    }
    return {**cols, "split": prep.split_column} if prep.split_column else cols


def _hub_absent(prep, columns: Sequence[str]) -> list[str]:
    cols = _hub_columns(prep)
    need = ["audio", "text", *(["split"] if prep.split_column else [])] + [
        r for r, v in (("speaker", prep.target_speakers), ("accent", prep.target_accents)) if v
    ]
    return [f"{r} column {cols[r]!r} (prepare.{r}_column)" for r in need if cols[r] not in columns]


def _hub_durations(ds, prep, n: int, complete: bool, seed: int) -> list[float]:
    """Seconds from the audio headers of a seeded sample of the listed rows."""
    from core.seeding import stream_rng

    probe_idx = sorted(
        stream_rng(seed, "preflight", "hub").choice(n, min(n, HUB_DURATION_SAMPLE), replace=False).tolist()
    )
    if complete:
        probe = ds.select(probe_idx)
    else:
        streamed = list(ds.take(HUB_STREAM_ROWS))
        probe = [streamed[i] for i in probe_idx]
    found = (audio_duration(data=(r[prep.audio_column] or {}).get("bytes")) for r in probe)
    return [d for d in found if d is not None]


def _row_role(prep, role: str, row: Mapping) -> str:
    """The role prepare gives a Hub row: its split's (role_sources), its split column value's
    (split_map), or none (prepare splits)."""
    from data_prep.prepare_args import parse_split_map

    if role or not prep.split_column:
        return role
    return parse_split_map(prep.split_map).get(str(row.get(prep.split_column) or ""), "?")


def _read_hub_split(prep, role: str, split: str, seed: int) -> SimpleNamespace | Check:
    """One split's rows, size and duration sample; a FAIL Check when it does not load or lacks a column."""
    from datasets import Audio

    name, where = "dataset source", f"Hub dataset {prep.path} [{split}]"
    try:
        ds, complete, n_total = _load_hub_split(prep, split)
        columns = list(ds.column_names or (ds.features or {}).keys())
    except Exception as e:  # noqa: BLE001 - whatever datasets raises (config, split, auth), the user needs its words
        missing = _missing_split(prep, role, split)
        return Check(name, FAIL, missing or f"{where} does not load: {type(e).__name__}: {e}")
    absent = _hub_absent(prep, columns)
    if absent:
        return Check(name, FAIL, f"{where}: no {', no '.join(absent)}; columns: {columns}")
    from data_prep.sources import hub_row_id

    ds = ds.cast_column(prep.audio_column, Audio(decode=False))
    cols = _hub_columns(prep)
    light = ds.select_columns([c for c in cols.values() if c in columns and c != prep.audio_column])
    listed = list(light) if complete else list(light.take(HUB_STREAM_ROWS))
    rows = [
        Row(
            hub_row_id(r.get(cols["id"]), prep.path, split, i),
            str(r.get(cols["text"]) or ""),
            str(r.get(cols["speaker"]) or ""),
            str(r.get(cols["accent"]) or ""),
            None,
            role=_row_role(prep, role, r),
        )
        for i, r in enumerate(listed)
    ]
    unmapped = sorted(
        {str(r.get(prep.split_column) or "") for r, row in zip(listed, rows, strict=True) if row.role == "?"}
    )
    if unmapped:
        return Check(
            name,
            FAIL,
            f"{where}: split column {prep.split_column!r} holds value(s) {unmapped} that prepare.split_map "
            "does not map; add a VALUE=ROLE item for each (ROLE skip leaves those rows out)",
        )
    seconds = _hub_durations(ds, prep, len(rows), complete, seed)
    return SimpleNamespace(
        split=split, role=role, rows=rows, n_total=n_total, complete=complete, seconds=seconds
    )


def _check_hub(prep, seed: int) -> Check:
    """A Hub dataset (or a local copy at prepare.path), every split the roles name: columns from
    its features, values and durations from the cached copy, or from a streamed sample when the
    network is allowed."""
    name = "dataset source"
    if not Path(prep.path).exists() and hub_offline() and not hub_dataset_cached(prep.path):
        # datasets would retry the network before giving up; offline and uncached means it cannot work.
        return Check(
            name,
            FAIL,
            f"Hub dataset {prep.path} is not in the local cache and HF_HUB_OFFLINE is set; "
            + OFFLINE_FIX.format(key="prepare.path"),
        )
    parts = []
    for role, split in _hub_roles(prep):
        part = _read_hub_split(prep, role, split, seed)
        if isinstance(part, Check):
            return part
        parts.append(part)
    rows = [r for p in parts for r in p.rows]
    mark_duplicates(rows)
    seconds = [s for p in parts for s in p.seconds]
    mean = sum(seconds) / len(seconds) if seconds else None
    complete = all(p.complete for p in parts)
    # a streamed split is a sample: its rows stand for n_total / n each (per role, sizes differ)
    role_scale = {p.role: p.n_total / len(p.rows) for p in parts if not p.complete and p.n_total and p.rows}
    sizes = ", ".join(
        f"{p.role + ' = ' if p.role else ''}[{p.split}] "
        f"{p.n_total if p.n_total is not None else 'unknown number of'} rows"
        for p in parts
    )
    by_role = f" (by role: {_role_counts(rows)})" if prep.split_column else ""
    detail = (
        f"Hub {prep.path}: {sizes}{by_role}"
        + ("" if complete else f"; values and durations from the first {HUB_STREAM_ROWS} streamed a split")
        + (f"; mean duration {mean:.1f} s from {len(seconds)} headers" if mean else "; durations unknown")
    )
    splits = ", ".join(p.split for p in parts)
    return Check(
        name,
        OK if complete else WARN,
        detail,
        facts={
            "rows": rows,
            "scale": max(role_scale.values(), default=1.0),
            "role_scale": role_scale,
            "values": {"speaker": {r.speaker for r in rows}, "accent": {r.accent for r in rows}},
            "where": f"{prep.path} [{splits}]",
            "complete": complete,
            "mean_seconds": mean,
            "duration_share": _share_in(seconds, prep),
        },
    )


def _share_in(seconds: Sequence[float], prep) -> float:
    """Share of a duration sample that the duration filter keeps."""
    if not seconds:
        return 1.0
    return sum(prep.min_duration <= s <= prep.max_duration for s in seconds) / len(seconds)


# ---------------------------------------------------------------------------------------------
# 3. counts and hours per split after the duration filter
# ---------------------------------------------------------------------------------------------
def _target_rule(prep) -> Callable[[Mapping], bool]:
    wanted = {"speaker": set(prep.target_speakers), "accent": set(prep.target_accents)}
    if not any(wanted.values()):
        return lambda r: True
    return lambda r: r["speaker"] in wanted["speaker"] or r["accent"] in wanted["accent"]


def _random_roles(kept: list[dict], prep, is_target, seed: int) -> dict[str, list[dict]]:
    """prepare's re-split (random_splits without its caps, which the totals apply)."""
    from core.seeding import stream_rng
    from data_prep.prepare import split_target, take_groups

    target = [r for r in kept if is_target(r)]
    train, test = split_target(
        target, prep.split_by, prep.test_fraction, stream_rng(seed, "prepare", "split")
    )
    dev, test = take_groups(test, prep.split_by, prep.dev_utterances, stream_rng(seed, "prepare", "dev"))
    source = [r for r in kept if not is_target(r)]
    return {"target_train": train, "target_dev": dev, "target_test": test, "source": source}


def _data_roles(kept: list[dict], prep, is_target, seed: int, dropped: Counter) -> dict[str, list[dict]]:
    """prepare's data_splits itself, its caps off (the totals apply them to whole-source counts)."""
    from data_prep.prepare import data_splits

    kept = [r for r in kept if r["role"] != "skip"]
    train_weight = next((r["weight"] for r in kept if r["role"] == "target_train"), 1.0)
    # dev_utterances counts whole-source rows; in a sample each row stands for `weight` of them
    dev_n = math.ceil(prep.dev_utterances / train_weight) if prep.dev_utterances else 0
    args = SimpleNamespace(
        **{**vars(prep), "max_train_utterances": 0, "max_test_utterances": 0, "dev_utterances": dev_n}
    )
    role_of = {r["id"]: r["role"] for r in kept}
    return data_splits(kept, role_of, is_target, args, seed, dropped, [])


def _totals(named: Mapping[str, list[dict]], prep, hours_known: bool) -> dict[str, dict[str, float]]:
    """Utterances and hours per split, weighted up to the whole source, prepare's caps applied."""
    out = {}
    for split, limit in (
        ("target_train", prep.max_train_utterances),
        ("target_dev", 0),
        ("target_test", prep.max_test_utterances),
        ("source", 0),
    ):
        part = named[split]
        n = sum(r["weight"] for r in part)
        secs = sum((r["duration"] or 0.0) * r["weight"] for r in part)
        # prepare's caps draw which rows stay; for totals, scaling to the cap is the same
        if limit and n > limit:
            secs, n = secs * limit / n, limit
        out[split] = {"utterances": round(n), "hours": secs / 3600 if hours_known else float("nan")}
    return out


def split_estimate(
    rows: Sequence[Row],
    prep,
    seed: int,
    scale: float = 1.0,
    mean_seconds: float | None = None,
    duration_share: float = 1.0,
    role_scale: Mapping[str, float] | None = None,
    dropped: Counter | None = None,
) -> dict[str, dict[str, float]]:
    """Utterances and hours per split as prepare will write them: its skips, its duration filter,
    its target rule and its split, a re-split or the data's own roles (the same functions, on rows
    without audio).

    Unknown durations count as ``mean_seconds`` (or the mean of the known ones); ``scale`` (or,
    per role, ``role_scale``) and ``duration_share`` scale a sample up to the whole source.
    ``dropped`` gets what the data's roles drop (non_target_held_out, refused_protected_text).
    """
    from data_prep.sources import role_origins

    known = [r.duration for r in rows if r.duration is not None]
    mean = mean_seconds or (sum(known) / len(known) if known else None)
    role_scale = role_scale or {}
    kept = [
        {
            "id": r.id,
            "text": r.text,
            "speaker": r.speaker,
            "accent": r.accent,
            "duration": r.duration if r.duration is not None else mean,
            "role": r.role,
            "weight": role_scale.get(r.role, scale) * duration_share,
        }
        for r in rows
        if not r.problem and (r.duration is None or prep.min_duration <= r.duration <= prep.max_duration)
    ]
    is_target = _target_rule(prep)
    if role_origins(prep):
        named = _data_roles(kept, prep, is_target, seed, Counter() if dropped is None else dropped)
    else:
        named = _random_roles(kept, prep, is_target, seed)
    if not prep.keep_source:
        named["source"] = []
    return _totals(named, prep, mean is not None)


def check_splits(src: Check, prep, seed: int) -> Check:
    from data_prep.sources import role_origins

    name = "splits after filters"
    rows = src.facts["rows"]
    dropped = Counter(r.problem for r in rows if r.problem)
    dropped["split_not_used"] = sum(r.role == "skip" for r in rows)
    est = split_estimate(
        rows,
        prep,
        seed,
        src.facts.get("scale", 1.0),
        src.facts.get("mean_seconds"),
        src.facts.get("duration_share", 1.0),
        src.facts.get("role_scale"),
        dropped,
    )
    dropped.update(
        "too_short" if r.duration < prep.min_duration else "too_long"
        for r in rows
        if not r.problem
        and r.role != "skip"
        and r.duration is not None
        and not prep.min_duration <= r.duration <= prep.max_duration
    )
    dropped = +dropped
    unknown = sum(1 for r in rows if not r.problem and r.duration is None)

    def hours(h: float) -> str:
        return "unknown h" if math.isnan(h) else f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"

    origins = role_origins(prep)
    parts = [f"{k} {v['utterances']} ({hours(v['hours'])})" for k, v in est.items() if v["utterances"]]
    detail = "; ".join(parts) or "nothing kept"
    if origins:
        detail += f"; splits from the data ({', '.join(f'{k}: {v}' for k, v in origins.items())})"
    if dropped:
        detail += f"; prepare will drop {dict(dropped)}" + (
            " (in the sample)" if src.facts.get("scale", 1) > 1 else ""
        )
    if unknown:
        detail += f"; {unknown} without a readable header counted at the mean duration"
    status = OK
    if not est["target_train"]["utterances"] or not est["target_test"]["utterances"]:
        status = FAIL
        fix = (
            "check target_*, which split each role reads (role_sources / split_map) and dev_utterances "
            "(taken out of target_train when no role is target_dev)"
            if origins
            else "check target_*, split_by (one speaker cannot be split by speaker) and test_fraction"
        )
        detail += (
            "; target_train and target_test must both hold utterances (train needs one, evaluation the other): "
            + fix
        )
    elif dropped.get("missing_file") and prep.on_error == "raise":
        status = FAIL
        detail += "; prepare.on_error is raise: the first missing file stops prepare"
    elif dropped.get("missing_file", 0) > 0.05 * len(rows):  # a few missing files are prepare's routine skips
        status = WARN
    return Check(name, status, detail, facts={"splits": est})


# ---------------------------------------------------------------------------------------------
# 4. models: config and processor load, language, CTC vocabulary
# ---------------------------------------------------------------------------------------------
def language_code(language: str) -> str:
    """``es`` from ``es``, ``spanish`` or ``Spanish`` (Whisper's names); the input lower-cased otherwise."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    lang = language.strip().lower()
    return lang if lang in LANGUAGES else TO_LANGUAGE_CODE.get(lang, lang)


def english_only(name: str, generation_config, vocab: Mapping[str, int]) -> bool:
    """Whether a Whisper checkpoint can only do English: a ``.en`` name, a generation config that
    says so (the rule ``core.asr.whisper`` applies), or a tokenizer without language tokens."""
    if name.rstrip("/").endswith(".en"):
        return True
    gen = generation_config
    if gen is not None and hasattr(gen, "is_multilingual"):
        multilingual = bool(gen.is_multilingual)
    else:
        multilingual = bool(getattr(gen, "lang_to_id", None))
    return not multilingual or "<|es|>" not in vocab


def unk_share(label_texts: Sequence[str], tokenizer) -> tuple[float, Counter]:
    """Share of label characters the CTC tokenizer turns into its unknown token, and the characters."""
    vocab = tokenizer.get_vocab()
    delimiter = getattr(tokenizer, "word_delimiter_token", "|") or "|"
    total, bad = 0, Counter()
    for t in label_texts:
        for ch in t.replace(" ", delimiter):
            total += 1
            if ch not in vocab:
                bad[ch] += 1
    return (sum(bad.values()) / total if total else 0.0), bad


def hub_model_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def load_model_info(name: str) -> dict[str, Any]:
    """Config, generation config, processor and parameter counts of a checkpoint, without its weights.

    Raises ``RuntimeError`` with the fix when it cannot be loaded (offline and not cached: at once).
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCTC,
        AutoModelForSpeechSeq2Seq,
        AutoProcessor,
        GenerationConfig,
    )

    from core.asr import model_kind
    from core.checkpoint import CheckpointError, resolve_model
    from core.checkpoint.resolve import HUB_ID

    try:
        path = resolve_model(name)
    except CheckpointError as e:
        raise RuntimeError(str(e)) from None
    if not Path(path).exists() and HUB_ID.match(path) and hub_offline() and not hub_model_cached(path):
        raise RuntimeError(
            f"{name} is not in the local Hub cache and HF_HUB_OFFLINE is set; "
            + OFFLINE_FIX.format(key="the model key")
        )
    try:
        config = AutoConfig.from_pretrained(path)
        kind = model_kind(config)
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{name}: {e}") from None
    try:
        gen = GenerationConfig.from_pretrained(path) if kind == "whisper" else None
    except OSError:
        gen = None
    # The meta device allocates no memory: parameter counts of a 1.5 B model in milliseconds.
    with torch.device("meta"):
        model = (AutoModelForSpeechSeq2Seq if kind == "whisper" else AutoModelForCTC).from_config(config)
    params = sum(p.numel() for p in model.parameters())
    encoder = model.get_encoder() if kind == "whisper" else getattr(model, model.base_model_prefix)
    enc_params = sum(p.numel() for p in encoder.parameters())
    frozen_ctc = sum(p.numel() for p in getattr(encoder, "feature_extractor", torch.nn.Module()).parameters())
    return {
        "path": path,
        "config": config,
        "kind": kind,
        "processor": processor,
        "generation_config": gen,
        "params": params,
        "encoder_params": enc_params,
        "feature_encoder_params": frozen_ctc,
    }


def check_model(
    role: str,
    name: str,
    language: str,
    texts: Sequence[str] = (),
    ctc_new_vocab: bool = True,
    loader: Callable[[str], dict] = load_model_info,
) -> Check:
    """One checkpoint a stage loads: it loads (config + processor), it fits ``language``, and a CTC
    head that keeps its vocabulary can spell the transcripts."""
    check_name = f"model ({role})"
    t0 = time.time()
    try:
        info = loader(name)
    except RuntimeError as e:
        return Check(check_name, FAIL, str(e))
    lang = language_code(language)
    tok = getattr(info["processor"], "tokenizer", info["processor"])
    detail = (
        f"{name}: {info['kind']}, {info['params'] / 1e6:.{0 if info['params'] >= 1e7 else 2}f} M parameters"
    )
    status = OK
    if info["kind"] == "whisper":
        if english_only(name, info["generation_config"], tok.get_vocab()):
            if lang != "en":
                return Check(
                    check_name,
                    FAIL,
                    f"{detail}; English-only checkpoint but the language is {language!r}: "
                    "use a multilingual Whisper (e.g. openai/whisper-small) or set the language to en",
                    facts=info,
                )
            detail += ", English-only (language en)"
        elif f"<|{lang}|>" not in tok.get_vocab():
            return Check(
                check_name,
                FAIL,
                f"{detail}; no language token <|{lang}|> for {language!r}: "
                "use a Whisper language code or name (en, es, english, ...)",
                facts=info,
            )
        else:
            detail += f", multilingual, language <|{lang}|>"
    elif texts and not ctc_new_vocab:
        from core.asr import CTCASR

        labels = [CTCASR(None, info["processor"]).label_text(t) for t in texts]
        share, bad = unk_share(labels, tok)
        detail += f"; {share:.2%} of {sum(map(len, labels))} transcript characters not in its vocabulary"
        if share > MAX_UNK_SHARE:
            status = WARN
            detail += (
                f" (most: {''.join(c for c, _ in bad.most_common(10))!r}): they train as <unk>; "
                "set train.ctc_new_vocab: true for a vocabulary from the training text"
            )
    elif info["kind"] == "ctc":
        detail += "; CTC vocabulary built from the training text (ctc_new_vocab)" if ctc_new_vocab else ""
    return Check(check_name, status, f"{detail} ({time.time() - t0:.1f} s)", facts=info)


# ---------------------------------------------------------------------------------------------
# 5. TTS engines and voices for the language
# ---------------------------------------------------------------------------------------------
def check_tts(gen, language: str, engine_factory: Callable | None = None) -> Check:
    """Every engine of ``generate.engines`` is installed and has a voice for the language, after
    ``generate.voices`` patterns; generate would skip a missing engine, so it is a FAIL here."""
    from data_prep.candidates import tts
    from data_prep.candidates.plan import select_voices
    from data_prep.candidates.speakable import language_of

    name = "TTS voices"
    if not gen.engines:
        return Check(name, OK, "generate.engines is empty: no synthetic candidates")
    factory = engine_factory or (lambda e: tts.cached_engine(e, gen.engine_timeout, gen.hf_model, language))
    lang = language_code(language)
    fails, notes = [], []
    for e in gen.engines:
        try:
            engine = factory(e)
        except (ValueError, ImportError, AttributeError) as err:
            fails.append(f"{e}: {err}")
            continue
        hint = getattr(engine, "install_hint", "") or "see the engine's documentation"
        if not engine.available():
            fails.append(f"{e} is not installed ({hint})")
            continue
        if e == "hf":  # loading the model is the engine's voice listing; its config is enough here
            why = _hf_tts_problem(gen.hf_model)
            (fails if why else notes).append(
                f"hf: {why or gen.hf_model + ' loads (its language is its card’s: not checked)'}"
            )
            continue
        try:
            voices = select_voices(engine.voices(), gen.voices, gen.max_voices_per_engine, 0)
        except tts.EngineUnavailable as err:
            fails.append(f"{e}: {err}")
            continue
        if not voices:
            fails.append(f"{e}: no voice matches generate.voices {gen.voices}")
            continue
        langs = Counter(language_of(engine.accent(v)) or "?" for v in voices)
        if lang not in langs and "?" not in langs:
            fails.append(
                f"{e} has {len(voices)} voices here, none for {lang!r} (languages: "
                f"{', '.join(sorted(langs))}); drop it from generate.engines or install voices for {lang!r} ({hint})"
            )
            continue
        notes.append(
            f"{e} {langs.get(lang, 0) or langs['?']} voices for {lang}"
            + (f" of {len(voices)}" if langs.get(lang, 0) != len(voices) else "")
        )
    detail = "; ".join(fails + notes)
    return Check(name, FAIL if fails else OK, detail)


def _hf_tts_problem(model: str) -> str:
    from core.checkpoint.resolve import HUB_ID

    if not Path(model).exists() and HUB_ID.match(model) and hub_offline() and not hub_model_cached(model):
        return f"{model} is not in the local Hub cache and HF_HUB_OFFLINE is set; " + OFFLINE_FIX.format(
            key="generate.hf_model"
        )
    try:
        from transformers import AutoConfig

        kind = AutoConfig.from_pretrained(model).model_type
    except (OSError, ValueError) as e:
        return f"{model} does not load: {e}"
    return (
        ""
        if kind in ("vits", "speecht5")
        else f"{model} is a {kind!r} model; the hf engine takes vits or speecht5"
    )


# ---------------------------------------------------------------------------------------------
# 6. GPUs and precision
# ---------------------------------------------------------------------------------------------
def check_gpus(ngpu: int, visible: int) -> Check:
    name = "GPUs"
    if ngpu < 1:
        return Check(name, FAIL, f"--ngpu {ngpu}: at least 1 process")
    if visible == 0:
        if ngpu == 1:
            return Check(name, OK, "no GPU visible: one process on the CPU")
        return Check(
            name,
            FAIL,
            f"--ngpu {ngpu} but no GPU is visible: on a CPU use --ngpu 1 "
            "(check nvidia-smi and CUDA_VISIBLE_DEVICES on a GPU box)",
        )
    if ngpu > visible:
        return Check(name, FAIL, f"--ngpu {ngpu} but {visible} GPU(s) visible: use --ngpu {visible} or less")
    status = WARN if ngpu < visible else OK
    return Check(
        name,
        status,
        f"{visible} visible, {ngpu} process(es)" + ("; the rest stay idle" if status == WARN else ""),
    )


def check_precision(bf16: bool, fp16: bool, cuda: bool, bf16_supported: bool) -> Check:
    name = "precision"
    if bf16 and fp16:
        return Check(name, FAIL, "train.bf16 and train.fp16 are both set: choose one")
    if bf16 and not (cuda and bf16_supported):
        where = "this GPU (bf16 needs Ampere or newer)" if cuda else "a machine without a GPU"
        return Check(
            name,
            FAIL,
            f"train.bf16 on {where}: transformers refuses it when training starts; "
            "set train.bf16=false" + (" and train.fp16=true" if cuda else ""),
        )
    if fp16 and not cuda:
        # accelerate lets fp16 through on a CPU (autocast), where it is slow and not what a GPU config meant
        return Check(
            name, WARN, "train.fp16 without a GPU runs as CPU autocast, slowly: set train.fp16=false on a CPU"
        )
    return Check(name, OK, "bf16" if bf16 else "fp16" if fp16 else "fp32")


# ---------------------------------------------------------------------------------------------
# 7. disk
# ---------------------------------------------------------------------------------------------
BYTES_PER_AUDIO_SECOND = 16_000 * 2  # the schema stores 16 kHz mono 16-bit WAV bytes
# Seconds of one TTS candidate: an IVR prompt or a sentence read aloud (the demo's average is 2-3 s).
TTS_SECONDS = 3.0
# Candidate audio is on disk up to four times: generate's shards and the merged dataset, then the
# filter's scored copy and its accepted subset.
CANDIDATE_COPIES = 4
# A checkpoint holds fp32 weights plus Adam's two fp32 moments: 3 x 4 bytes a parameter.
CHECKPOINT_BYTES_PER_PARAM = 12


def existing_parent(path: str | os.PathLike) -> Path:
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return p


def plan_size(
    splits: Mapping[str, Mapping[str, float]], gen, voices_per_engine: Mapping[str, int]
) -> dict[str, float]:
    """Candidates generate will make and their seconds, from the plan's settings (not run)."""
    tts_n = sum(min(v, gen.max_voices_per_engine or v) for v in voices_per_engine.values()) * (
        gen.texts_per_voice or 20
    )
    if gen.max_synthetic:
        tts_n = min(tts_n, gen.max_synthetic)
    real = ["target_train"] + (["source"] if gen.include_source else [])
    copies = sum(splits[s]["utterances"] for s in real) * gen.copies_per_utterance
    copy_secs = (
        sum(splits[s]["hours"] * 3600 for s in real if not math.isnan(splits[s]["hours"]))
        * gen.copies_per_utterance
    )
    return {"tts": tts_n, "copies": copies, "seconds": tts_n * TTS_SECONDS + copy_secs}


def disk_need(
    real_hours: float | None,
    candidate_seconds: float | None,
    params: int | None,
    save_total_limit: int | None,
) -> dict[str, float | None]:
    """Bytes each stage writes (an estimate: see the constants above); None where its input is unknown."""
    need: dict[str, float | None] = {
        "prepare": None if real_hours is None else real_hours * 3600 * BYTES_PER_AUDIO_SECOND,
        "candidates": None
        if candidate_seconds is None
        else candidate_seconds * BYTES_PER_AUDIO_SECOND * CANDIDATE_COPIES,
        "checkpoints": None,
    }
    if params:
        kept = (save_total_limit or 2) + 1  # the best checkpoint is kept on top of the limit
        need["checkpoints"] = params * CHECKPOINT_BYTES_PER_PARAM * kept + params * 4  # + the final model
    return need


def check_disk(output_dir: str, need: Mapping[str, float | None], usage: Callable | None = None) -> Check:
    name = "disk"
    where = existing_parent(output_dir)
    free = (usage or shutil.disk_usage)(where).free
    total = sum(v for v in need.values() if v is not None)
    parts = ", ".join(f"{k} {'unknown' if v is None else f'{v / 1e9:.1f} GB'}" for k, v in need.items())
    unknown = any(v is None for v in need.values())
    detail = (
        f"{free / 1e9:.1f} GB free at {where}; estimated need {'at least ' if unknown else ''}"
        f"{total / 1e9:.1f} GB ({parts}; an estimate)"
    )
    if free < total:
        return Check(name, FAIL, detail + "; free space or point run.output_dir at a larger disk")
    if free < 1.5 * total:  # the estimate may be short by that much (temporary folders, logs, caches)
        return Check(name, WARN, detail + "; less than 1.5x the estimate")
    return Check(name, WARN if unknown else OK, detail)


# ---------------------------------------------------------------------------------------------
# 8. rough time and memory
# ---------------------------------------------------------------------------------------------
# Effective training throughput, FLOP/s per process. GPU: about 15% of an A100's 312 TFLOP/s
# bf16 peak, what small-batch speech fine-tuning with on-the-fly features reaches; fp32 a fifth
# of it. CPU: calibrated on the demo (tiny.en, frozen encoder, 4 windows a step: about 3 s a
# step on one core).
GPU_FLOPS = {"half": 45e12, "fp32": 9e12}
CPU_FLOPS = 4e10
# Whisper's encoder always sees a 30-s window (1500 frames); label tokens about 3 per second of speech.
WHISPER_FRAMES, TOKENS_PER_SECOND, CTC_FRAMES_PER_SECOND = 1500, 3, 50
# Activation memory per layer, per sample: 34 x sequence x width bytes in half precision with
# fused attention (Korthikanti et al. 2022, without the attention-matrix term); twice in fp32.
ACT_BYTES = 34
# Adam training state: fp32 weights, gradients and two moments, 16 bytes a trained parameter.
TRAIN_STATE_BYTES = 16


def rough_estimate(
    info: Mapping[str, Any], targs, ngpu: int, cuda: bool, mean_seconds: float
) -> dict[str, float]:
    """Seconds per step, total training seconds and peak memory per process (bytes) of training."""
    c = info["config"]
    params, enc = info["params"], info["encoder_params"]
    half = bool(targs.bf16 or targs.fp16)
    batch = targs.per_device_train_batch_size
    if info["kind"] == "whisper":
        width, enc_layers, dec_layers = c.d_model, c.encoder_layers, c.decoder_layers
        packed = targs.packing == "on" or (targs.packing == "auto" and mean_seconds < 15)
        tokens = TOKENS_PER_SECOND * (28 if packed else mean_seconds)
        enc_mult = 2 if targs.freeze_encoder else 6  # a frozen encoder runs forward only
        flops = batch * (enc_mult * enc * WHISPER_FRAMES + 6 * (params - enc) * tokens)
        acts = (0 if targs.freeze_encoder else enc_layers * WHISPER_FRAMES) + dec_layers * tokens
        trained = params - enc if targs.freeze_encoder else params
    else:
        width, layers = c.hidden_size, c.num_hidden_layers
        frames = CTC_FRAMES_PER_SECOND * mean_seconds
        frozen = info["feature_encoder_params"] if targs.freeze_feature_encoder else 0
        flops = batch * 6 * params * frames
        acts = layers * frames
        trained = params - frozen
    if targs.lora:
        trained = 0.01 * params  # adapters: about 1% of the weights at rank 16
    flops *= targs.gradient_accumulation_steps
    step = flops / (GPU_FLOPS["half" if half else "fp32"] if cuda else CPU_FLOPS)
    steps = targs.max_steps if targs.max_steps and targs.max_steps > 0 else None
    memory = (
        trained * TRAIN_STATE_BYTES
        + (params - trained) * (2 if half else 4)
        + (acts * width * ACT_BYTES * (1 if half else 2) * batch)
    )
    return {"step_seconds": step, "train_seconds": step * steps if steps else float("nan"), "memory": memory}


def check_estimates(
    info: Mapping[str, Any] | None,
    targs,
    ngpu: int,
    cuda: bool,
    gpu_memory: float | None,
    splits: Mapping[str, Mapping[str, float]] | None,
) -> Check:
    name = "time/memory (rough)"
    if info is None:
        return skipped(name, "the training model did not load")
    hours = splits["target_train"]["hours"] if splits else float("nan")
    n = splits["target_train"]["utterances"] if splits else 0
    mean = hours * 3600 / n if n and not math.isnan(hours) else 5.0
    est = rough_estimate(info, targs, ngpu, cuda, mean)
    device = f"{ngpu} GPU(s)" if cuda else "1 CPU core"
    train_t = (
        "epochs decide the steps" if math.isnan(est["train_seconds"]) else _duration(est["train_seconds"])
    )
    detail = (
        f"train: ~{est['step_seconds']:.2f} s/step, {train_t} on {device}, "
        f"~{est['memory'] / 1e9:.1f} GB per process; assumes {'%.0f' % ((GPU_FLOPS['half'] if targs.bf16 or targs.fp16 else GPU_FLOPS['fp32']) / 1e12) + ' TFLOP/s per GPU' if cuda else '0.04 TFLOP/s on one core'}, "
        f"Adam 16 B/trained param, 34 B x seq x width activations per layer, mean utterance {mean:.1f} s; "
        "decoding for gate/evaluation not included; off by 2x either way"
    )
    status = OK
    if cuda and gpu_memory and est["memory"] > 0.9 * gpu_memory:
        status = WARN
        detail += (
            f"; above 90% of the GPU's {gpu_memory / 1e9:.0f} GB: lower per_device_train_batch_size "
            "(raise gradient_accumulation_steps) or train.freeze_encoder / train.lora"
        )
    return Check(name, status, detail)


def _duration(seconds: float) -> str:
    return (
        f"~{seconds / 3600:.1f} h"
        if seconds >= 3600
        else f"~{seconds / 60:.0f} min"
        if seconds >= 60
        else f"~{seconds:.0f} s"
    )


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def run_checks(
    config: str,
    ngpu: int = 1,
    overrides: Sequence[str] = (),
    output_dir: str = "",
    usage: Callable | None = None,
) -> list[Check]:
    import torch

    checks = [check_config(config, overrides, output_dir)]
    if checks[0].status == FAIL:
        return checks + [
            skipped(n, "the config does not parse")
            for n in (
                "dataset source",
                "model",
                "TTS voices",
                "GPUs",
                "precision",
                "disk",
                "time/memory (rough)",
            )
        ]
    s = checks[0].facts["sections"]
    run, prep, gen, train, ev = s["run"], s["prepare"], s["generate"], s["train"], s["evaluate"]

    src = check_source(prep, run.seed)
    checks.append(src)
    splits = None
    if src.status != FAIL:
        values, where = src.facts["values"], src.facts["where"]
        wanted = {"speaker": prep.target_speakers, "accent": prep.target_accents}
        tgt = check_targets(values, wanted, where)
        if tgt.status == FAIL and not src.facts["complete"]:
            tgt.status, tgt.detail = WARN, tgt.detail + f" (only the first {HUB_STREAM_ROWS} rows were read)"
        checks.append(tgt)
        if tgt.status != FAIL:
            sp = check_splits(src, prep, run.seed)
            checks.append(sp)
            splits = sp.facts["splits"]
        else:
            checks.append(skipped("splits after filters", "a target value is not in the source"))
    else:
        checks += [
            skipped("target values", "the source did not resolve"),
            skipped("splits after filters", "the source did not resolve"),
        ]

    texts = [r.text for r in src.facts.get("rows", [])[:5000] if r.text]
    models = {"train": (train.model_name_or_path, train.language)}
    if gen.gate and gen.engines:
        models["generate.gate_model"] = (gen.gate_model, gen.gate_language or gen.language)
    models["evaluate"] = (ev.model, train.language)
    roles: dict[tuple[str, str], list[str]] = {}
    for role, key in models.items():
        roles.setdefault(key, []).append(role)  # one load per checkpoint and language, naming every user
    train_info = None
    for (model, lang), users in roles.items():
        role = ", ".join(users)
        c = check_model(role, model, lang, texts, train.ctc_new_vocab if "train" in users else False)
        checks.append(c)
        if "train" in users and c.status != FAIL:
            train_info = c.facts

    checks.append(check_tts(gen, gen.language))
    visible = torch.cuda.device_count()
    checks.append(check_gpus(ngpu, visible))
    cuda = visible > 0
    checks.append(
        check_precision(bool(train.bf16), bool(train.fp16), cuda, cuda and torch.cuda.is_bf16_supported())
    )

    if splits is None and train_info is None:
        checks.append(skipped("disk", "neither the data's size nor the model's is known (see above)"))
    else:
        real_hours, cand_seconds = None, None
        if splits is not None:
            plan = plan_size(splits, gen, _voices_per_engine(gen))
            real_hours = sum(v["hours"] for v in splits.values() if not math.isnan(v["hours"]))
            cand_seconds = plan["seconds"]
        need = disk_need(
            real_hours, cand_seconds, train_info["params"] if train_info else None, train.save_total_limit
        )
        checks.append(check_disk(run.output_dir, need, usage))
    gpu_mem = torch.cuda.get_device_properties(0).total_memory if cuda else None
    checks.append(check_estimates(train_info, train, ngpu, cuda, gpu_mem, splits))
    return checks


def _voices_per_engine(gen) -> dict[str, int]:
    """Voices each installed engine offers after generate.voices (0 for a missing one)."""
    from data_prep.candidates import tts
    from data_prep.candidates.plan import select_voices

    out = {}
    for e in gen.engines:
        try:
            engine = tts.cached_engine(e, gen.engine_timeout, gen.hf_model, gen.language)
            out[e] = (
                len(select_voices(engine.voices(), gen.voices, 0, 0))
                if engine.available() and e != "hf"
                else (1 if e == "hf" else 0)
            )
        except Exception:  # noqa: BLE001 - a broken engine is the TTS check's finding; here it just adds nothing
            out[e] = 0
    return out


def format_table(checks: Sequence[Check], width: int = 100) -> str:
    name_w = max(len(c.name) for c in checks)
    lines = [f"{'check':<{name_w}}  status  detail", f"{'-' * name_w}  ------  {'-' * 40}"]
    indent = " " * (name_w + 10)
    for c in checks:
        wrapped = textwrap.wrap(c.detail, width=max(40, width - len(indent))) or [""]
        lines.append(f"{c.name:<{name_w}}  {c.status:<6}  {wrapped[0]}")
        lines += [indent + w for w in wrapped[1:]]
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines.append(
        f"\n{fails} FAIL, {warns} warn: "
        + ("fix the FAIL lines before renting a GPU" if fails else "ready to run")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.preflight",
        description="Check a config before any heavy stage: data, models, TTS voices, GPUs, disk, time.",
    )
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--ngpu", type=int, default=1, help="processes run_finetune.sh will launch (its --ngpu)")
    p.add_argument("--output_dir", default="", help="as run_finetune.sh's --output_dir")
    p.add_argument("overrides", nargs="*", help="section.key=value, as run_finetune.sh takes them")
    args = p.parse_args(argv)
    t0 = time.time()
    checks = run_checks(args.config, args.ngpu, args.overrides, args.output_dir)
    print(format_table(checks, shutil.get_terminal_size((110, 20)).columns))
    print(f"({time.time() - t0:.0f} s)")
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
