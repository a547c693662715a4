"""Readers that turn each kind of source into raw utterance records.

A reader only *lists* utterances (id, where the audio is, transcript, speaker, accent); it never
decodes audio, so a bad file is found and reported in one place (`data_prep.prepare`), with the
same reasons and counts whatever the source. Audio is either a file path or encoded bytes.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datasets import Audio, load_dataset

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_APT = "apt-get install -y asterisk-core-sounds-en-wav asterisk-core-sounds-en"
FSDD_REPO = "https://github.com/Jakobovski/free-spoken-digit-dataset"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class RawUtterance:
    id: str
    text: str | bytes | None
    speaker: str = ""
    accent: str = ""
    path: str = ""  # audio file, or "" when the audio comes as bytes
    audio_bytes: bytes | None = None
    origin_file: str = ""  # where a problem should be reported (the audio file or manifest row)
    skip_reason: str = ""  # set by a reader that knows this entry is not an utterance (a tone)


class SourceError(ValueError):
    """A source that cannot be read at all (as opposed to one bad utterance in it)."""


# ---------------------------------------------------------------------------------------------
_DESCRIPTION = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")
_KEYPAD_WORDS = {"*": "star", "#": "pound"}


def _spoken_text(text: str) -> str:
    """What an Asterisk prompt actually says, from its doc-file transcript."""
    text = _DESCRIPTION.sub(" ", text)
    text = re.sub(r"(?<!\S)[*#](?!\S)", lambda m: _KEYPAD_WORDS[m.group()], text)
    return " ".join(text.split())


def read_asterisk(path: str = "") -> Iterator[RawUtterance]:
    """The Asterisk IVR prompts: one US female voice (Allison), 8 kHz telephone audio.

    Transcripts come from the package's doc file (`name: text`). Descriptions in brackets,
    parentheses or angle brackets (`[ascending tones]`, `(1 second of silence)`, `<beep
    ascending>`, `IAX (note: does not say "2")`) are not spoken and are removed; a text that was
    only a description is a tone or silence and is skipped as no_speech (the prepare report
    counts it). The keypad symbols `*` and `#` are read aloud as "star" and "pound".
    """
    sounds = Path(path) if path else ASTERISK_SOUNDS
    if not sounds.is_dir() or not ASTERISK_TRANSCRIPTS.is_file():
        raise SourceError(
            f"asterisk prompts not found at {sounds} / {ASTERISK_TRANSCRIPTS}; install them: {ASTERISK_APT}"
        )
    with gzip.open(ASTERISK_TRANSCRIPTS, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = (s.strip() for s in line.split(":", 1))
            spoken = _spoken_text(text)
            yield RawUtterance(
                id=f"asterisk-{name.replace('/', '-')}",
                text=spoken,
                skip_reason="" if spoken else "no_speech",
                speaker="allison",
                accent="en-US",
                path=str(sounds / f"{name}.wav"),
                origin_file=str(sounds / f"{name}.wav"),
            )


def read_fsdd(path: str = "") -> Iterator[RawUtterance]:
    """Free Spoken Digit Dataset: `{digit}_{speaker}_{index}.wav`, transcript = the digit as a word."""
    if not path:
        raise SourceError(
            f"source fsdd needs prepare.path: a clone of {FSDD_REPO} (or its recordings/ folder)"
        )
    root = Path(path)
    rec = root / "recordings" if (root / "recordings").is_dir() else root
    files = sorted(rec.glob("*.wav"))
    if not files:
        raise SourceError(f"no FSDD recordings (`{{digit}}_{{speaker}}_{{index}}.wav`) under {rec}")
    accents = _fsdd_accents(root / "metadata.py")
    for f in files:
        m = re.fullmatch(r"(\d)_([A-Za-z]+)_(\d+)", f.stem)
        if not m:
            raise SourceError(f"{f}: FSDD file names must be {{digit}}_{{speaker}}_{{index}}.wav")
        digit, speaker, _ = m.groups()
        yield RawUtterance(
            id=f"fsdd-{f.stem}",
            text=DIGIT_WORDS[int(digit)],
            speaker=speaker,
            accent=accents.get(speaker, ""),
            path=str(f),
            origin_file=str(f),
        )


def _fsdd_accents(metadata_py: Path) -> dict[str, str]:
    # metadata.py holds one dict literal; read it with literal_eval instead of executing the file.
    if not metadata_py.is_file():
        return {}
    tree = ast.parse(metadata_py.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            meta = ast.literal_eval(node.value)
            return {spk: str(v.get("accent", "")) for spk, v in meta.items()}
    return {}


# ---------------------------------------------------------------------------------------------
def _records_from_table(
    rows: Iterator[dict], base: Path, where: str, columns: dict[str, str]
) -> Iterator[RawUtterance]:
    """Rows of a CSV/JSONL manifest or an audiofolder's metadata -> records; paths relative to ``base``."""
    audio_col = columns["audio"]
    for i, row in enumerate(rows):
        if audio_col not in row:
            raise SourceError(
                f"{where}: row {i + 1} has no audio column {audio_col!r}; set `audio_column` to one of {sorted(row)}"
            )
        rel = str(row[audio_col] or "")
        audio_path = Path(rel) if Path(rel).is_absolute() else base / rel
        uid = str(row.get(columns["id"]) or "") or Path(rel).with_suffix("").as_posix().replace("/", "-")
        yield RawUtterance(
            id=uid,
            text=row.get(columns["text"]),
            speaker=str(row.get(columns["speaker"]) or ""),
            accent=str(row.get(columns["accent"]) or ""),
            path=str(audio_path),
            origin_file=f"{audio_path} ({where}, row {i + 1})",
        )


def _read_csv_rows(path: Path) -> Iterator[dict]:
    # Bytes that are not UTF-8 are kept as bytes so prepare can report *which* transcript is bad.
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    decoded = []
    for raw in lines:
        try:
            decoded.append(raw.decode("utf-8-sig"))
        except UnicodeDecodeError:
            decoded.append(raw.decode("utf-8", errors="surrogateescape"))
    for row in csv.DictReader(decoded):
        yield {k: _undo_surrogates(v) for k, v in row.items()}


def _undo_surrogates(v):
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return v.encode("utf-8", errors="surrogateescape")
    return v


def _read_jsonl_rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourceError(
                        f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object"
                    ) from e


def read_manifest(path: str, columns: dict[str, str]) -> Iterator[RawUtterance]:
    """A CSV or JSONL manifest: one row per utterance, audio paths relative to the manifest."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"manifest {p} not found")
    rows = _read_jsonl_rows(p) if p.suffix in (".jsonl", ".json") else _read_csv_rows(p)
    yield from _records_from_table(rows, p.parent, str(p), columns)


def read_audiofolder(path: str, columns: dict[str, str]) -> Iterator[RawUtterance]:
    """A folder with `metadata.csv` (or `.jsonl`) whose `file_name` column names the audio files
    (the layout of `datasets`' audiofolder builder)."""
    root = Path(path)
    for name in ("metadata.csv", "metadata.jsonl"):
        meta = root / name
        if meta.is_file():
            break
    else:
        raise SourceError(
            f"{root}: an audiofolder needs metadata.csv or metadata.jsonl with a `file_name` column"
        )
    rows = _read_jsonl_rows(meta) if meta.suffix == ".jsonl" else _read_csv_rows(meta)
    yield from _records_from_table(rows, root, str(meta), {**columns, "audio": "file_name"})


def read_hub(name: str, config: str, split: str, columns: dict[str, str]) -> Iterator[RawUtterance]:
    """A Hub dataset; audio is read undecoded (bytes) so decoding errors surface per utterance."""
    ds = load_dataset(name, config or None, split=split)
    if columns["audio"] not in ds.column_names:
        raise SourceError(
            f"Hub dataset {name} has no column {columns['audio']!r}; columns: {ds.column_names}"
        )
    ds = ds.cast_column(columns["audio"], Audio(decode=False))
    for i, row in enumerate(ds):
        audio = row[columns["audio"]]
        uid = str(row.get(columns["id"]) or f"{name.replace('/', '-')}-{split}-{i:07d}")
        yield RawUtterance(
            id=uid,
            text=row.get(columns["text"]),
            speaker=str(row.get(columns["speaker"]) or ""),
            accent=str(row.get(columns["accent"]) or ""),
            path="" if audio.get("bytes") else (audio.get("path") or ""),
            audio_bytes=audio.get("bytes"),
            origin_file=f"{name}[{split}] row {i} ({audio.get('path') or 'bytes'})",
        )


def read_source(args) -> Iterator[RawUtterance]:
    """Dispatch on ``args.source`` (a `data_prep.prepare_args.PrepareArgs`)."""
    columns = {
        "audio": args.audio_column,
        "text": args.text_column,
        "speaker": args.speaker_column,
        "accent": args.accent_column,
        "id": args.id_column,
    }
    if args.source == "asterisk":
        return read_asterisk(args.path)
    if args.source == "fsdd":
        return read_fsdd(args.path)
    if not args.path:
        raise SourceError(f"source={args.source} needs `path`")
    if args.source == "audiofolder":
        return read_audiofolder(args.path, columns)
    if args.source in ("csv", "jsonl"):
        return read_manifest(args.path, columns)
    if args.source == "hub":
        return read_hub(args.path, args.hub_config, args.hub_split, columns)
    raise SourceError(f"unknown source {args.source!r}")
