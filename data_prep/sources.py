"""Readers that turn each kind of source into raw utterance records.

A reader only *lists* utterances (id, where the audio is, transcript, speaker, accent); it never
decodes audio, so a bad file is found and reported in one place (`data_prep.prepare`), with the
same reasons and counts whatever the source. Audio is either a file path or encoded bytes.
"""

from __future__ import annotations

import ast
import codecs
import csv
import dataclasses
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Audio, load_dataset

from data_prep.prepare_args import LOCAL_SOURCES, ROLES, parse_role_sources, parse_split_map


@dataclass(frozen=True)
class AsteriskPrompts:
    """One language's Debian package of the Asterisk prompts: the same studio voice (Allison)."""

    sounds: Path
    transcripts: Path  # the package's doc file, `name: text` a line
    encoding: str  # of the doc file: checked, both are UTF-8 (the es one has á é í ó ú)
    accent: str
    keypad: dict[str, str]  # how a bare `*` / `#` in a transcript is read aloud
    id_prefix: str

    @property
    def apt(self) -> str:
        pkg = self.transcripts.parent.name
        return f"apt-get install -y {pkg}-wav {pkg}"


ASTERISK = {
    "en": AsteriskPrompts(
        sounds=Path("/usr/share/asterisk/sounds/en_US_f_Allison"),
        transcripts=Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"),
        encoding="utf-8",
        accent="en-US",
        keypad={"*": "star", "#": "pound"},
        id_prefix="asterisk",  # unchanged from before there were two languages: ids stay stable
    ),
    "es": AsteriskPrompts(
        sounds=Path("/usr/share/asterisk/sounds/es_MX_f_Allison"),
        transcripts=Path("/usr/share/doc/asterisk-core-sounds-es/core-sounds-es.txt.gz"),
        encoding="utf-8",
        accent="es-MX",
        # the es transcripts never hold a bare symbol today; these are what a Mexican IVR says
        keypad={"*": "asterisco", "#": "gato"},
        id_prefix="asterisk-es",
    ),
}
# kept for callers that name the English package directly
ASTERISK_SOUNDS = ASTERISK["en"].sounds
ASTERISK_TRANSCRIPTS = ASTERISK["en"].transcripts
ASTERISK_APT = ASTERISK["en"].apt
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
    text_edit: str = ""  # what the reader removed from the transcript (e.g. notes), counted by prepare
    skip_reason: str = ""  # set by a reader that knows this entry is not usable (a tone, a refused path)
    skip_detail: str = ""  # what exactly, for the message
    role: str = ""  # target_train, target_dev, ... when the data says (split_column, role_sources)


class SourceError(ValueError):
    """A source that cannot be read at all (as opposed to one bad utterance in it)."""


# ---------------------------------------------------------------------------------------------
_DESCRIPTION = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")


def _spoken_text(text: str, keypad: dict[str, str] | None = None) -> str:
    """What an Asterisk prompt actually says, from its doc-file transcript."""
    keypad = ASTERISK["en"].keypad if keypad is None else keypad
    text = _DESCRIPTION.sub(" ", text)
    text = re.sub(r"(?<!\S)[*#](?!\S)", lambda m: keypad[m.group()], text)
    return " ".join(text.split())


def read_asterisk(path: str = "", language: str = "en") -> Iterator[RawUtterance]:
    """The Asterisk IVR prompts: one female voice (Allison), 8 kHz telephone audio, in US English
    (``en``) or Mexican Spanish (``es``).

    Transcripts come from the package's doc file (`name: text`). Descriptions in brackets,
    parentheses or angle brackets (`[ascending tones]`, `(1 second of silence)`, `<beep
    ascending>`, `IAX (note: does not say "2")`, `[tono simple]`) are not spoken and are removed;
    a text that was only a description is a tone or silence and is skipped as no_speech, one that
    kept words is marked `notes_removed`, and a prompt listed with no text at all is skipped as
    no_transcript (the prepare report counts all three). The keypad symbols `*`
    and `#` are read aloud in the language ("star" / "pound").
    """
    if language not in ASTERISK:
        raise SourceError(
            f"prepare.language {language!r}: the Asterisk prompts are packaged in {sorted(ASTERISK)} here"
        )
    pkg = ASTERISK[language]
    sounds = Path(path) if path else pkg.sounds
    if not sounds.is_dir() or not pkg.transcripts.is_file():
        raise SourceError(
            f"asterisk prompts not found at {sounds} / {pkg.transcripts}; install them: {pkg.apt}"
        )
    for line in read_text_file(pkg.transcripts, pkg.encoding).split("\n"):
        line = line.strip()
        if not line or line.startswith(";") or ":" not in line:
            continue
        name, text = (s.strip() for s in line.split(":", 1))
        spoken = _spoken_text(text, pkg.keypad)
        noted = spoken and _DESCRIPTION.search(text)
        # `dir-welcome:` with nothing after it is speech nobody transcribed, not a tone
        skip = "" if spoken else "no_speech" if text else "no_transcript"
        yield RawUtterance(
            id=f"{pkg.id_prefix}-{name.replace('/', '-')}",
            text=spoken,
            skip_reason=skip,
            speaker="allison",
            accent=pkg.accent,
            path=str(sounds / f"{name}.wav"),
            origin_file=str(sounds / f"{name}.wav"),
            text_edit="notes_removed" if noted else "",
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
    tree = ast.parse(metadata_py.read_text(encoding="utf-8"))  # Python source is UTF-8
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            meta = ast.literal_eval(node.value)
            return {spk: str(v.get("accent", "")) for spk, v in meta.items()}
    return {}


# ---------------------------------------------------------------------------------------------
# Manifests (CSV, JSONL, audiofolder metadata)
#
# The whole manifest is read and checked before the first row is handed on, so a wrong encoding,
# a missing column or a target speaker the file does not hold stops the run before any audio is
# decoded, naming the file, the line and the key to set.

# What each logical column holds, for messages.
_COLUMN_ROLE = {
    "audio": "audio file path",
    "text": "transcript",
    "speaker": "speaker id",
    "accent": "accent label",
    "id": "utterance id",
    "split": "split name",
}


@dataclass(frozen=True)
class TableOptions:
    """How to read a manifest: its columns, its text encoding, and where its audio may live."""

    columns: dict[str, str]  # logical name (audio, text, speaker, accent, id) -> column name
    encoding: str = "utf-8"
    allow_outside_paths: bool = False  # accept absolute paths and `..` (default: confined to the folder)
    required: tuple[str, ...] = ("audio", "text")  # logical columns the header must have
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # speaker/accent values asked for
    split_map: dict[str, str] = field(default_factory=dict)  # value of the split column -> role
    role: str = ""  # the role of every row (role_sources); file-name ids get it as a prefix


def check_encoding(encoding: str, key: str = "prepare.encoding") -> str:
    """The codec to decode manifests with; utf-8 also accepts a byte-order mark (Excel writes one)."""
    try:
        name = codecs.lookup(encoding).name
        b"x".decode(name, "ignore")  # refuses codecs that are not text encodings (hex, base64, rot13)
    except LookupError:
        raise SourceError(
            f"{key} {encoding!r} is not a known text encoding; use a Python codec name "
            "such as utf-8, latin-1 or cp1252"
        ) from None
    return "utf-8-sig" if name == "utf-8" else name


def read_text_file(path: Path, encoding: str, key: str = "prepare.encoding") -> str:
    """The whole file decoded with ``encoding``; on a bad byte, the error names the line and the fix."""
    codec = check_encoding(encoding, key)
    data = path.read_bytes()
    if path.suffix == ".gz":  # Debian ships its doc files gzipped
        data = gzip.decompress(data)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        line = data[: e.start].decode(codec, errors="replace").count("\n") + 1
        bad = data[e.start : e.end].hex(" ")
        raise SourceError(
            f"{path}, line {line}: not valid {encoding} (byte(s) {bad}); set `{key}` to the file's "
            f"encoding (e.g. `{key}: latin-1` or `cp1252`), or re-save the file as UTF-8"
        ) from None


def _has_lone_surrogate(value) -> bool:
    # JSON can spell "\udce9", a half of a UTF-16 pair that is no text: Arrow would fail on it later.
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_csv_rows(path: Path, encoding: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line number, row)]) of a CSV file."""
    reader = csv.DictReader(io.StringIO(read_text_file(path, encoding), newline=""))
    rows = []
    try:
        header = list(reader.fieldnames or [])
        # line_num after a row is its last physical line: exact unless a quoted cell spans lines
        rows.extend((reader.line_num, row) for row in reader)
    except csv.Error as e:  # e.g. a cell over csv's 128 KiB field limit
        # DictReader.line_num lags a failed row; its inner reader's counts the line that failed
        raise SourceError(
            f"{path}, line {reader.reader.line_num}: not readable as CSV ({e}); fix that line"
        ) from None
    if not header:
        raise SourceError(f"{path} is empty: a manifest needs a header line naming its columns")
    return header, rows


def _read_jsonl_rows(path: Path, encoding: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(every key seen, [(line number, row)]) of a JSONL file; blank lines are allowed."""
    rows, keys = [], {}
    # split on "\n" only: str.splitlines would also split inside strings at U+2028 and friends.
    for n, line in enumerate(read_text_file(path, encoding).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(
                f"{path}, line {n}: not valid JSON ({e.msg}); each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise SourceError(
                f"{path}, line {n}: a JSON {type(row).__name__}, not an object; each line must be one "
                'JSON object such as {"audio": "a.wav", "text": "..."}'
            )
        if any(_has_lone_surrogate(v) for v in (*row, *row.values())):
            raise SourceError(
                f"{path}, line {n}: holds a lone surrogate escape (e.g. \\udce9), which is not text; "
                "write the character itself (the file is read as UTF-8 by default)"
            )
        keys.update(dict.fromkeys(row))
        rows.append((n, row))
    if not rows:
        raise SourceError(f"{path} is empty: a JSONL manifest needs one JSON object a line")
    return list(keys), rows


def _check_header(where: str, found: list[str], opts: TableOptions, fixed: dict[str, str]) -> None:
    """Every required column is in the header, or the error names it, the columns found and the fix."""
    for role in opts.required:
        name = opts.columns[role]
        if name in found:
            continue
        why = f" (target_{role}s is set)" if role in opts.targets else ""
        fix = (
            fixed.get(role)
            or f"set `prepare.{role}_column` to the column that holds the {_COLUMN_ROLE[role]}"
        )
        raise SourceError(
            f"{where}: no {_COLUMN_ROLE[role]} column {name!r}{why}; columns found: {found}; {fix}"
        )


def _check_targets(where: str, records: list[RawUtterance], targets: dict[str, tuple[str, ...]]) -> None:
    """Target speakers/accents the manifest never names: a typo caught before decoding any audio."""
    for role, wanted in targets.items():
        listed = {getattr(r, role) for r in records}
        unknown = sorted(set(wanted) - listed)
        if unknown:
            raise SourceError(
                f"{where}: target_{role}s {unknown} not found; {role}s in the manifest: {sorted(listed)}"
            )


def _split_value(row: dict, opts: TableOptions) -> str:
    return str(row.get(opts.columns["split"]) or "")


def _role(row: dict, opts: TableOptions) -> str:
    return opts.split_map[_split_value(row, opts)] if "split" in opts.columns else opts.role


def _check_split_values(where: str, opts: TableOptions, values) -> None:
    """Every value of the split column has a role, or the run stops before any audio is decoded."""
    unknown = sorted(set(values) - set(opts.split_map))
    if unknown:
        raise SourceError(
            f"{where}: split column {opts.columns['split']!r} holds value(s) {unknown} that prepare.split_map "
            f"does not map (it maps {sorted(opts.split_map)}); add a VALUE=ROLE item for each, ROLE one of "
            f"{', '.join(ROLES)} (skip leaves those rows out)"
        )


def confine(rel: str, base: Path, allow_outside: bool) -> tuple[Path, str]:
    """(the audio path, why it is refused or ""): a manifest may name files inside its folder only.

    Decided on the path as written: an absolute path or a `..` component is refused, unless
    `allow_outside_paths` is set. Symlinks inside the folder are followed, not checked: putting
    them there is the folder owner's choice (the Hub cache links snapshots/ to blobs/, and symlink
    farms are a common way to assemble a corpus), whereas a manifest row is data that may come
    from anyone. Any `..` is refused rather than normalised away: `link/../x` walks out of the
    folder when `link` is a symlink, whatever `os.path.normpath` says.
    """
    p = Path(rel)
    if allow_outside:
        return (p if p.is_absolute() else base / p), ""
    if p.is_absolute():
        return p, f"an absolute path; only files under {base} are read"
    if ".." in p.parts:
        return base / p, f"`..` may lead out of {base}"
    return base / p, ""


def _records_from_table(
    header: list[str],
    rows: list[tuple[int, dict]],
    base: Path,
    where: str,
    opts: TableOptions,
    fixed: dict[str, str] | None = None,
) -> list[RawUtterance]:
    """Rows of a CSV/JSONL manifest or an audiofolder's metadata -> records; paths relative to ``base``.

    A row that cannot name a usable audio file is still listed, with its skip reason, so the
    prepare report counts it.
    """
    columns = opts.columns
    _check_header(where, header, opts, fixed or {})
    if "split" in columns:
        _check_split_values(where, opts, [_split_value(row, opts) for _, row in rows])
    records = []
    for line, row in rows:
        cell = row.get(columns["audio"])
        rel = "" if cell is None else str(cell)
        skip, detail, audio_path = "", "", base
        if not rel.strip() or "\x00" in rel:
            skip, detail = "invalid_path", "empty" if not rel.strip() else "holds a NUL character"
        else:
            audio_path, detail = confine(rel, base, opts.allow_outside_paths)
            skip = "path_outside_folder" if detail else ""
        stem = os.path.splitext(Path(rel).as_posix())[0].replace("/", "-") if not skip else ""
        stem = f"{opts.role}-{stem}" if stem and opts.role else stem
        uid = str(row.get(columns["id"]) or "") or stem or f"{Path(where).name}-line{line}"
        records.append(
            RawUtterance(
                id=uid,
                text=row.get(columns["text"]),
                speaker=str(row.get(columns["speaker"]) or ""),
                accent=str(row.get(columns["accent"]) or ""),
                path="" if skip == "invalid_path" else str(audio_path),
                origin_file=f"{rel if skip else audio_path} ({where}, line {line})",
                skip_reason=skip,
                skip_detail=detail,
                role=_role(row, opts),
            )
        )
    _check_targets(where, records, opts.targets)
    return records


def _read_table(path: Path, encoding: str):
    return (
        _read_jsonl_rows(path, encoding)
        if path.suffix in (".jsonl", ".json")
        else _read_csv_rows(path, encoding)
    )


def read_manifest(path: str, opts: TableOptions) -> Iterator[RawUtterance]:
    """A CSV or JSONL manifest: one row per utterance, audio paths relative to the manifest."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"manifest {p} not found")
    header, rows = _read_table(p, opts.encoding)
    yield from _records_from_table(header, rows, p.parent, str(p), opts)


def read_audiofolder(path: str, opts: TableOptions) -> Iterator[RawUtterance]:
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
    header, rows = _read_table(meta, opts.encoding)
    opts = dataclasses.replace(opts, columns={**opts.columns, "audio": "file_name"})
    fixed = {"audio": "an audiofolder names its audio files in a `file_name` column: rename that column"}
    yield from _records_from_table(header, rows, root, str(meta), opts, fixed)


def hub_row_id(value, name: str, split: str, index: int) -> str:
    """A Hub row's id: its id column, else one from the dataset, split and row number (the
    preflight builds the same ids, since prepare's dev/test draws order groups by them)."""
    return str(value or f"{name.replace('/', '-')}-{split}-{index:07d}")


def read_hub(name: str, config: str, split: str, opts: TableOptions) -> Iterator[RawUtterance]:
    """A Hub dataset; audio is read undecoded (bytes) so decoding errors surface per utterance.

    Its paths are not confined: they come from the `datasets` cache (or are only names beside
    the bytes), not from a manifest the user may have been handed.
    """
    columns = opts.columns
    ds = load_dataset(name, config or None, split=split)
    where = f"Hub dataset {name} [{split}]"
    _check_header(where, ds.column_names, opts, {})
    if "split" in columns:
        _check_split_values(where, opts, [str(v or "") for v in ds.unique(columns["split"])])
    ds = ds.cast_column(columns["audio"], Audio(decode=False))
    for i, row in enumerate(ds):
        audio = row[columns["audio"]] or {}
        uid = hub_row_id(row.get(columns["id"]), name, split, i)
        yield RawUtterance(
            id=uid,
            text=row.get(columns["text"]),
            speaker=str(row.get(columns["speaker"]) or ""),
            accent=str(row.get(columns["accent"]) or ""),
            path="" if audio.get("bytes") else (audio.get("path") or ""),
            audio_bytes=audio.get("bytes") or None,
            origin_file=f"{name}[{split}] row {i} ({audio.get('path') or 'bytes'})",
            skip_reason="" if audio.get("bytes") or audio.get("path") else "invalid_path",
            skip_detail="" if audio.get("bytes") or audio.get("path") else "the audio cell is empty",
            role=_role(row, opts),
        )


def table_header(path: str, source: str, encoding: str = "utf-8") -> tuple[str, list[str]]:
    """(the manifest file, its columns) of a csv/jsonl manifest or an audiofolder's metadata: what
    the preflight checks the prepare.*_column keys against, every missing one at once."""
    p = Path(path)
    if source == "audiofolder":
        p = next((p / n for n in ("metadata.csv", "metadata.jsonl") if (p / n).is_file()), p / "metadata.csv")
    if not p.is_file():
        raise SourceError(f"manifest {p} not found")
    return str(p), _read_table(p, encoding)[0]


def table_options(args) -> TableOptions:
    """The manifest options of a `PrepareArgs`: columns, encoding, confinement, what must be there.

    The speaker (accent) column is required only when target_speakers (target_accents) picks
    values from it; otherwise a missing one means one speaker (no accent), as documented.
    """
    targets = {
        role: tuple(values)
        for role, values in (("speaker", args.target_speakers), ("accent", args.target_accents))
        if values
    }
    split = {"split": args.split_column} if args.split_column else {}
    return TableOptions(
        columns={
            "audio": args.audio_column,
            "text": args.text_column,
            "speaker": args.speaker_column,
            "accent": args.accent_column,
            "id": args.id_column,
            **split,
        },
        encoding=args.encoding,
        allow_outside_paths=args.allow_outside_paths,
        required=("audio", "text", *targets, *split),
        targets=targets,
        split_map=parse_split_map(args.split_map),
    )


def role_origins(args) -> dict[str, list[str]]:
    """Where each role's rows come from, for the report: {} when prepare splits the data itself."""
    if args.split_column:
        out: dict[str, list[str]] = {}
        for value, role in parse_split_map(args.split_map).items():
            out.setdefault(role, []).append(f"{args.split_column}={value}")
        return out
    where = (lambda w: f"{args.path} [{w}]") if args.source == "hub" else str
    return {role: [where(w)] for role, w in parse_role_sources(args.role_sources).items()}


def _read_local(source: str, path: str, opts: TableOptions) -> Iterator[RawUtterance]:
    return read_audiofolder(path, opts) if source == "audiofolder" else read_manifest(path, opts)


def _read_roles(args, opts: TableOptions) -> Iterator[RawUtterance]:
    """Each role from its own Hub split, manifest or folder. Target speakers/accents are looked for
    in all of them together: a source-only manifest need not hold the target."""
    roles = parse_role_sources(args.role_sources)
    each = {role: dataclasses.replace(opts, role=role, targets={}) for role in roles}
    if args.source == "hub":
        for role, split in roles.items():
            yield from read_hub(args.path, args.hub_config, split, each[role])
        return
    records = [r for role, path in roles.items() for r in _read_local(args.source, path, each[role])]
    _check_targets(" + ".join(roles.values()), records, opts.targets)
    yield from records


def read_source(args) -> Iterator[RawUtterance]:
    """Dispatch on ``args.source`` (a `data_prep.prepare_args.PrepareArgs`)."""
    if args.source == "asterisk":
        return read_asterisk(args.path, args.language)
    if args.source == "fsdd":
        return read_fsdd(args.path)
    if not args.path and not args.role_sources:
        raise SourceError(f"source={args.source} needs `path`")
    opts = table_options(args)
    check_encoding(opts.encoding)  # a typo in the encoding fails here, whatever the source
    if args.role_sources:
        return _read_roles(args, opts)
    if args.source in LOCAL_SOURCES:
        return _read_local(args.source, args.path, opts)
    if args.source == "hub":
        return read_hub(args.path, args.hub_config, args.hub_split, opts)
    raise SourceError(f"unknown source {args.source!r}")
