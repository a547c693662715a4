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
feeds, so a typo anywhere fails at the first stage, naming the key; so is every value (type,
choices, range and a field's own validator: ``core.validation``; values that must go together,
by the section's ``check``), and a command-line value is checked by the same rules before the
stage starts. The resolved config of a stage is written
beside its output (``config.yaml``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import logging
import os
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from core import files, paths
from core.validation import RULE, Rule, Spec, problems, specs

ENTRY_POINT_GROUP = "asr_recipe.sections"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def arg(
    default,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    validate: Callable[[Any], object] | None = None,
    **kw,
):
    """A dataclass field with a default and a help string (both are required everywhere).

    ``ge``/``gt``/``le``/``lt`` bound a number (shown in ``--help``); ``validate(value)`` raises
    ``ValueError`` saying what is allowed (a pure function, e.g. the filter's policy parser); ``kw``
    goes to argparse (``choices=[...]``). YAML and command-line values both pass these checks
    before a stage starts (``core.validation``).
    """
    rule = Rule(ge=ge, gt=gt, le=le, lt=lt, validate=validate)
    metadata = {"help": help, **kw, **({RULE: rule} if rule != Rule() else {})}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Shared by every stage
# ---------------------------------------------------------------------------------------------
@dataclass
class RunArgs:
    output_dir: str = arg(
        paths.DEFAULT_OUTPUT_DIR, "Experiment folder; every stage writes a subfolder of it."
    )
    seed: int = arg(
        0,
        "Seed for every random choice in every stage (splits, generators, filter, training).",
        ge=0,  # numpy and torch refuse negative seeds
    )


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Section:
    """One YAML section: the dataclasses it fills, recipe defaults that differ from theirs, rules
    (bounds, validators) for fields of dataclasses we do not own, by field name, and ``check``:
    a pure function of all the section's values (defaults filled in) that raises ``ValueError``
    when values that are each valid do not go together."""

    name: str
    types: tuple[type, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    rules: Mapping[str, Rule] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], object] | None = None

    def specs(self) -> dict[str, Spec]:
        """Every init field's validation spec, by name: the keys the section takes."""
        rules = tuple(sorted(self.rules.items()))
        return {k: v for t in self.types for k, v in specs(t, rules).items()}

    def problem(self, values: Mapping[str, Any]) -> str | None:
        """Why ``values`` (the section's keys set in a file or on the command line) do not go
        together, filled in with the defaults; None when they do or when there is no ``check``."""
        if self.check is None:
            return None
        full = {}
        for t in self.types:
            for f in dataclasses.fields(t):
                if f.init and f.default is not dataclasses.MISSING:
                    full[f.name] = f.default
                elif f.init and f.default_factory is not dataclasses.MISSING:
                    full[f.name] = f.default_factory()
        try:
            self.check({**full, **self.defaults, **values})
        except ValueError as err:
            return f"{self.name}: {err}"
        return None


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


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML (``"rasie"``, ``1.5``, ``true``, ``null``)."""
    return json.dumps(value, default=str)


def load_yaml(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a config file and check every key and value of every section against the dataclasses.

    Every problem in the file is reported at once, one line each, in a :class:`ConfigError`.
    Numeric strings (PyYAML reads ``1e-5`` as one) come back as numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (configs/ holds examples, e.g. configs/demo.yaml)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    known = sections()
    found: list[str] = []
    for name, values in raw.items():
        if name != "run" and name not in known:
            found.append(f"unknown section {name!r}; known sections: {sorted(['run', *known])}")
            continue
        if values is None:
            raw[name] = values = {}
        elif not isinstance(values, dict):
            found.append(f"section {name!r} must be a mapping of keys to values, got {_show(values)}")
            continue
        fields = specs(RunArgs) if name == "run" else known[name].specs()
        unknown = set(values) - set(fields)
        if unknown:
            found.append(
                f"unknown key(s) {sorted(unknown)} in section {name!r}; "
                f"run `python -m <stage> --help` for the valid keys"
            )
        known_values = {k: v for k, v in values.items() if k in fields}
        checked, bad = problems(known_values, fields, lambda k, v, s=name: f"{s}.{k}: {_show(v)}")
        raw[name] = {**values, **checked}
        found += bad
        if name != "run" and not bad and (why := known[name].problem(checked)):
            found.append(why)  # values that are each fine but do not go together
    if found:
        raise ConfigError("\n".join(f"{path}: {line}" for line in found))
    return raw


class _Parser(HfArgumentParser):
    """``HfArgumentParser`` that keeps our :class:`Rule` out of argparse and shows it in ``--help``."""

    def __init__(self, dataclass_types, rules: Mapping[str, Rule] | None = None, **kw):
        self._rules = dict(rules or {})  # before super().__init__, which adds the arguments
        super().__init__(dataclass_types, **kw)

    def _parse_dataclass_field(self, parser, field: dataclasses.Field):
        metadata = dict(field.metadata)
        rule = metadata.pop(RULE, None) or self._rules.get(field.name)
        if rule is not None and rule.has_bounds():
            metadata["help"] = f"{metadata.get('help', '')} [{rule.describe(field.name)}]".strip()
        field = copy.copy(field)  # the dataclass's own Field keeps its metadata
        field.metadata = types.MappingProxyType(metadata)
        super()._parse_dataclass_field(parser, field)


def _output_dir_problem(output_dir: str) -> str | None:
    """Why ``output_dir`` cannot be the experiment folder (None: it can): it, or the nearest part
    of it that exists, must be a folder."""
    path = Path(output_dir)
    for part in (path, *path.parents):
        if part.exists():
            if part.is_dir():
                return None
            what = "is an existing file" if part == path else f"cannot be created: {part} is a file"
            return (
                f"run.output_dir {output_dir} {what}, and the experiment folder must be a folder: "
                "choose another output_dir (--output_dir DIR or run.output_dir in the config) or move the file away"
            )
    return None


def _changed(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> dict[str, Any]:
    """The values of ``parsed`` that the command line set to something else than the defaults
    (recipe, dataclass and YAML) give."""
    base = vars(parser.parse_known_args([])[0])
    return {k: v for k, v in vars(parsed).items() if v != base[k]}


def _cli_label(key: str, value: Any) -> str:
    shown = " ".join(map(str, value)) if isinstance(value, list) else getattr(value, "value", value)
    return f"command line: --{key} {shown}"


def parse_args(name: str, argv: list[str] | None = None, description: str | None = None):
    """Parse ``run`` and the section ``name`` from ``--config FILE`` plus CLI overrides.

    Every value is checked (``core.validation``) before any dataclass is built, so a stage never
    starts on a wrong one. Returns ``(run_args, *section_dataclasses)``.
    """
    run_values, values = resolve(name, argv, description)
    sec = section(name)
    built = [t(**{f.name: values[f.name] for f in dataclasses.fields(t) if f.init}) for t in sec.types]
    return (RunArgs(**run_values), *built)


def resolve(
    name: str, argv: list[str] | None = None, description: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checked values of ``run`` and of the section ``name`` (defaults, YAML, command line),
    as plain dicts: what :func:`parse_args` builds its dataclasses from. The preflight reads every
    section this way without building them: transformers' training arguments refuse ``bf16`` on a
    machine without a GPU in their constructor, which is a finding to report, not a parse error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    yaml_cfg = load_yaml(known.config) if known.config else {}

    sec = section(name)
    run_parser = _Parser([RunArgs], allow_abbrev=False)
    stage_parser = _Parser(list(sec.types), rules=sec.rules, description=description, allow_abbrev=False)
    run_parser.set_defaults(**yaml_cfg.get("run", {}))
    stage_parser.set_defaults(**sec.defaults)
    stage_parser.set_defaults(**yaml_cfg.get(name, {}))
    if "-h" in rest or "--help" in rest:
        print(f"--config FILE: a YAML file with a `run` and a `{name}` section; --key value overrides it.\n")
        print(run_parser.format_help())
        stage_parser.parse_args(["--help"])
    run_ns, stage_argv = run_parser.parse_known_args(rest)
    stage_ns, leftover = stage_parser.parse_known_args(stage_argv)
    if leftover:
        raise ConfigError(f"unknown command-line argument(s) {leftover} for stage {name!r}")
    # The YAML's values passed load_yaml and the defaults are the recipe's (tests check them):
    # what is left to check is what the command line changed.
    found = problems(_changed(run_parser, run_ns), specs(RunArgs), _cli_label)[1]
    found += problems(_changed(stage_parser, stage_ns), sec.specs(), _cli_label)[1]
    if not found and (why := sec.problem(vars(stage_ns))):
        found.append(why)
    if (why := _output_dir_problem(run_ns.output_dir)) is not None:
        found.append(why)
    if found:
        raise ConfigError("\n".join(found))
    return vars(run_ns), vars(stage_ns)


def parse_cli(name: str, argv: list[str] | None = None, description: str | None = None):
    """:func:`parse_args` for a stage's ``main``: a wrong config ends the process with its message
    (every problem, one a line), not a traceback that buries it."""
    try:
        return parse_args(name, argv, description)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None


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
    return stage(*parse_cli(name, argv, description=description))
