"""Arguments of the prepare stage (section `prepare`)."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Section, arg


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
    split_by: str = arg(
        "text",
        "How target_test is held out: `text` (no transcript in both splits), `speaker`, or `utterance`.",
        choices=["text", "speaker", "utterance"],
    )
    test_fraction: float = arg(
        0.5,
        "Fraction of target groups (texts, speakers or utterances) held out as target_test.",
        gt=0,  # both splits must exist: train needs target_train, evaluation target_test
        lt=1,
    )
    dev_utterances: int = arg(
        0,
        "Move about this many held-out utterances (whole groups, as split_by) from target_test into a "
        "`target_dev` split, for checkpoint selection and tuning without touching target_test; 0: none.",
        ge=0,
    )
    max_train_utterances: int = arg(
        0, "Keep at most this many target_train utterances (0: all); the rest is dropped, counted.", ge=0
    )
    max_test_utterances: int = arg(0, "Keep at most this many target_test utterances (0: all).", ge=0)
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


SECTION = Section("prepare", (PrepareArgs,))
