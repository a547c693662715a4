"""One configuration system for every stage: typed dataclasses, a YAML file, CLI overrides.

A config file has one section per stage plus ``run`` (shared by all stages)::

    run:      {output_dir: exp/demo, seed: 0}
    prepare:  {source: asterisk, ...}
    train:    {max_steps: 200, ...}

Each stage declares its section beside its code (``SECTION = Section(name, dataclasses)`` in an
``args`` module) and registers it as an entry point of the group ``asr_recipe.sections`` in
pyproject.toml, so this module finds every section without importing either side of the recipe.
A stage parses ``run`` + its own section with ``HfArgumentParser``; ``--key value`` on the
command line overrides the YAML. Every section of the file is checked against the dataclasses it
feeds, so a typo anywhere fails at the first stage, naming the key. The resolved config of a
stage is written beside its output (``config.yaml``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from core import files, paths

ENTRY_POINT_GROUP = "asr_recipe.sections"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def arg(default, help: str, **kw):
    """A dataclass field with a default and a help string (both are required everywhere)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


# ---------------------------------------------------------------------------------------------
# Shared by every stage
# ---------------------------------------------------------------------------------------------
@dataclass
class RunArgs:
    output_dir: str = arg(
        paths.DEFAULT_OUTPUT_DIR, "Experiment folder; every stage writes a subfolder of it."
    )
    seed: int = arg(0, "Seed for every random choice in every stage (splits, generators, filter, training).")


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Section:
    """One YAML section: the dataclasses it fills and recipe defaults that differ from theirs."""

    name: str
    types: tuple[type, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def field_names(self) -> set[str]:
        return {f.name for t in self.types for f in dataclasses.fields(t)}


@functools.cache
def sections() -> dict[str, Section]:
    """Every registered section by name (entry points ``asr_recipe.sections``)."""
    found = {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if not found:
        raise ConfigError(
            f"no config sections registered (entry point group {ENTRY_POINT_GROUP!r}): "
            "install the project first, e.g. `pip install -e .`"
        )
    for name, section in found.items():
        if not isinstance(section, Section) or section.name != name:
            raise ConfigError(
                f"entry point {name!r} of {ENTRY_POINT_GROUP!r} must name a Section called {name!r}"
            )
    return dict(sorted(found.items()))


def section(name: str) -> Section:
    known = sections()
    if name not in known:
        raise ConfigError(f"unknown section {name!r}; known sections: {sorted(known)}")
    return known[name]


def load_yaml(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a config file and check every key of every section against the dataclasses."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (configs/ holds examples, e.g. configs/demo.yaml)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    known = sections()
    for name, values in raw.items():
        if name != "run" and name not in known:
            raise ConfigError(f"{path}: unknown section {name!r}; known sections: {sorted(['run', *known])}")
        if values is None:
            raw[name] = {}
        elif not isinstance(values, dict):
            raise ConfigError(f"{path}: section {name!r} must be a mapping")
        valid = {f.name for f in dataclasses.fields(RunArgs)} if name == "run" else known[name].field_names()
        unknown = set(raw[name]) - valid
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {sorted(unknown)} in section {name!r}; "
                f"run `python -m <stage> --help` for the valid keys"
            )
    return raw


def parse_args(name: str, argv: list[str] | None = None, description: str | None = None):
    """Parse ``run`` and the section ``name`` from ``--config FILE`` plus CLI overrides.

    Returns ``(run_args, *section_dataclasses)``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    yaml_cfg = load_yaml(known.config) if known.config else {}

    sec = section(name)
    run_parser = HfArgumentParser([RunArgs], allow_abbrev=False)
    stage_parser = HfArgumentParser(list(sec.types), description=description, allow_abbrev=False)
    run_parser.set_defaults(**yaml_cfg.get("run", {}))
    stage_parser.set_defaults(**sec.defaults)
    stage_parser.set_defaults(**yaml_cfg.get(name, {}))
    if "-h" in rest or "--help" in rest:
        print(f"--config FILE: a YAML file with a `run` and a `{name}` section; --key value overrides it.\n")
        print(run_parser.format_help())
        stage_parser.parse_args(["--help"])
    run_args, rest = run_parser.parse_known_args(rest)
    *stage_args, leftover = stage_parser.parse_args_into_dataclasses(rest, return_remaining_strings=True)
    if leftover:
        raise ConfigError(f"unknown command-line argument(s) {leftover} for stage {name!r}")
    return (RunArgs(**vars(run_args)), *stage_args)


def to_dict(*args) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in args:
        d = a.to_dict() if hasattr(a, "to_dict") else dataclasses.asdict(a)
        out.update(d)
    return out


def save_resolved(
    path: str | os.PathLike, name: str, run_args: RunArgs, *stage_args, extra: dict | None = None
) -> None:
    """Write the resolved config of one stage (``run`` + the section) as YAML, atomically."""
    doc = {"run": dataclasses.asdict(run_args), name: to_dict(*stage_args)}
    if extra:
        doc.update(extra)
    files.atomic_file(path, lambda tmp: Path(tmp).write_text(yaml.safe_dump(doc, sort_keys=False)))


def run_stage(
    name: str, stage: Callable[..., Any], argv: list[str] | None = None, description: str | None = None
):
    """A stage's ``main``: log at INFO, parse ``run`` and the section ``name``, call ``stage(run, *args)``."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return stage(*parse_args(name, argv, description=description))
