"""Arguments of the prepare stage (section `prepare`)."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Section, arg

# What a split of the data can be used as; `skip` leaves its rows out (counted as split_not_used).
ROLES = ("target_train", "target_dev", "target_test", "source", "skip")
LOCAL_SOURCES = ("audiofolder", "csv", "jsonl")


def _pair(item: str, example: str, last: bool = False) -> tuple[str, str]:
    left, eq, right = item.rpartition("=") if last else item.partition("=")
    if not eq or not left.strip() or not right.strip():
        raise ValueError(f"item {item!r} is not `{example}`")
    return left.strip(), right.strip()


def parse_split_map(items: list[str]) -> dict[str, str]:
    """`["train=target_train", "test=target_test"]` -> {split value: role}; several values may share
    a role (Common Voice's `train` and `other`), a value may not be named twice."""
    out: dict[str, str] = {}
    for item in items:
        value, role = _pair(item, "VALUE=ROLE", last=True)  # roles hold no `=`; a value may
        if role not in ROLES:
            raise ValueError(f"{item}: role {role!r} is not one of: {', '.join(ROLES)}")
        if value in out:
            raise ValueError(f"split value {value!r} is named twice; give each value one role")
        out[value] = role
    return out


def parse_role_sources(items: list[str]) -> dict[str, str]:
    """`["target_train=validation", "target_test=test"]` -> {role: Hub split, manifest or folder}."""
    out: dict[str, str] = {}
    for item in items:
        role, where = _pair(item, "ROLE=SPLIT_OR_PATH")
        if role not in ROLES or role == "skip":
            raise ValueError(f"{role}={where}: role {role!r} is not one of: {', '.join(ROLES[:-1])}")
        if role in out:
            raise ValueError(
                f"role {role!r} is named twice ({out[role]!r} and {where!r}); give each role one source "
                "(for several splits in one role use split_column and split_map)"
            )
        out[role] = where
    return out


@dataclass
class PrepareArgs:
    source: str = arg(
        "asterisk",
        "Where the target speech comes from.",
        choices=["asterisk", "fsdd", "audiofolder", "csv", "jsonl", "hub"],
    )
    path: str = arg(
        "",
        "Folder (audiofolder, fsdd), manifest file (csv, jsonl) or Hub dataset id (hub). "
        "Empty for asterisk (the Debian package's folder).",
    )
    language: str = arg(
        "en",
        "Language of the target speech, as a code (en, es). source=asterisk: which package's prompts are read "
        "(en: asterisk-core-sounds-en-wav, es: asterisk-core-sounds-es-wav). Recorded in report.json; the "
        "later stages take theirs in generate.language, train.language and evaluate.language.",
    )
    hub_config: str = arg("", "Hub dataset configuration name (source=hub).")
    hub_split: str = arg("train", "Hub dataset split to read (source=hub).")
    audio_column: str = arg(
        "audio", "Column holding audio (hub) or the audio file path (csv, jsonl, relative to the manifest)."
    )
    text_column: str = arg("text", "Column holding the transcript.")
    speaker_column: str = arg(
        "speaker", "Column holding the speaker id; empty or missing means one speaker per source."
    )
    accent_column: str = arg("accent", "Column holding the accent label; empty or missing means no accent.")
    id_column: str = arg(
        "id", "Column holding a unique utterance id; when missing, ids come from file names or row numbers."
    )
    encoding: str = arg(
        "utf-8",
        "Text encoding of the manifest (csv, jsonl, audiofolder metadata), e.g. latin-1 or cp1252 for files "
        "saved by older tools; a byte that is not valid in it stops the run, naming the file and line.",
    )
    allow_outside_paths: bool = arg(
        False,
        "Let manifest rows name absolute paths or paths with `..` (csv, jsonl, audiofolder). Off: such a row is "
        "skipped and counted as path_outside_folder; symlinks inside the folder are followed either way.",
    )
    target_speakers: list[str] = arg(
        [],
        "Speakers that form the target; the other speakers go to the `source` split. Empty: every speaker is target.",
    )
    target_accents: list[str] = arg(
        [],
        "Accents that form the target (with target_speakers: either matches); the rest goes to `source`. Empty: no accent filter.",
    )
    keep_source: bool = arg(
        True, "Write non-target utterances as a `source` split (perturbed into candidates later)."
    )
    split_column: str = arg(
        "",
        "Column (csv, jsonl, audiofolder metadata, hub) naming each row's split, e.g. `split`; its values get "
        "roles from split_map and prepare does not re-split (test_fraction is ignored). Empty: no such column.",
    )
    split_map: list[str] = arg(
        [],
        "With split_column: `VALUE=ROLE` items, ROLE one of target_train, target_dev, target_test, source, skip "
        "(rows left out), e.g. [train=target_train, dev=target_dev, test=target_test]. A value found in the data "
        "but not in the map stops the run before any audio is decoded.",
        validate=parse_split_map,
    )
    role_sources: list[str] = arg(
        [],
        "One source per role instead of a re-split: `ROLE=WHERE` items, ROLE one of target_train, target_dev, "
        "target_test, source; WHERE is a split of the dataset `path` (hub: e.g. [target_train=validation, "
        "target_test=test]; hub_split is then unused) or a manifest or folder of the source kind (csv, jsonl, "
        "audiofolder; leave path empty). test_fraction is ignored. Ids taken from file names are prefixed with "
        "the role, since two folders often reuse names.",
        validate=parse_role_sources,
    )
    split_by: str = arg(
        "text",
        "How target_test is held out: `text` (no transcript in both splits), `speaker`, or `utterance`; with "
        "splits from the data (split_column, role_sources), how dev_utterances carves target_dev out of "
        "target_train.",
        choices=["text", "speaker", "utterance"],
    )
    test_fraction: float = arg(
        0.5,
        "Fraction of target groups (texts, speakers or utterances) held out as target_test. Ignored when the "
        "splits come from the data (split_column, role_sources).",
        gt=0,  # both splits must exist: train needs target_train, evaluation target_test
        lt=1,
    )
    dev_utterances: int = arg(
        0,
        "Move about this many held-out utterances (whole groups, as split_by) from target_test into a "
        "`target_dev` split, for checkpoint selection and tuning without touching target_test; 0: none. With "
        "splits from the data and no target_dev role, the groups come out of target_train instead, so the "
        "official test split stays whole.",
        ge=0,
    )
    max_train_utterances: int = arg(
        0, "Keep at most this many target_train utterances (0: all); the rest is dropped, counted.", ge=0
    )
    max_test_utterances: int = arg(0, "Keep at most this many target_test utterances (0: all).", ge=0)
    unused_texts: bool = arg(
        False,
        "Keep the transcripts of the target utterances that max_train_utterances / max_test_utterances leave out "
        "as text only (data/unused_texts.txt; their audio is not written): in-domain sentences for the generate "
        "stage to synthesize (generate.prepared_texts). Texts of target_dev and target_test are never among them.",
    )
    protect_test_texts: bool = arg(
        True,
        "Record the target_test texts so no stage synthesizes them (the leakage guard). Turn off only for a closed "
        "vocabulary (e.g. spoken digits) where every text is in both splits by design.",
    )
    min_duration: float = arg(
        0.05, "Drop audio shorter than this many seconds (zero-length files are corrupt input).", ge=0
    )
    max_duration: float = arg(
        30.0, "Drop audio longer than this many seconds (Whisper's window is 30 s).", gt=0
    )
    on_error: str = arg(
        "skip",
        "Bad input (missing/corrupt/empty audio, NaN, empty transcript): `skip` logs and counts it, `raise` stops.",
        choices=["skip", "raise"],
    )
    limit: int = arg(0, "Read at most this many source utterances (0: all); for quick trials.", ge=0)


def check_section(values) -> None:
    """Split settings that are each valid but do not go together (run before anything is read)."""
    column, split_map, roles = values["split_column"], values["split_map"], values["role_sources"]
    if split_map and not column:
        raise ValueError(
            "split_map is set but split_column is empty: set split_column to the column naming each row's split"
        )
    if column and not split_map:
        raise ValueError(
            f"split_column {column!r} needs split_map, one VALUE=ROLE item per value of that column, "
            "e.g. [train=target_train, test=target_test]"
        )
    if column and roles:
        raise ValueError(
            "split_column and role_sources both say where the splits come from: keep one of them"
        )
    if (column or roles) and values["source"] not in ("hub", *LOCAL_SOURCES):
        key = "split_column" if column else "role_sources"
        raise ValueError(
            f"{key} needs a source with splits (hub, csv, jsonl, audiofolder), not {values['source']}"
        )
    if roles and values["source"] in LOCAL_SOURCES and values["path"]:
        raise ValueError(
            f"role_sources names each role's {values['source']} manifest or folder, so path "
            f"({values['path']!r}) would be unused: leave path empty"
        )
    if roles and values["source"] == "hub" and not values["path"]:
        raise ValueError(
            "role_sources with source hub names splits of the dataset `path`: set path to its Hub id or folder"
        )


SECTION = Section("prepare", (PrepareArgs,), check=check_section)
