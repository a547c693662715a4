"""Check config values against their dataclass fields: type, choices, range and a field's own validator.

argparse checks a value's type and ``choices`` only when it comes from the command line; the YAML
file reaches the parser through ``set_defaults``, which checks nothing, so without this module
``on_error: rasie`` ran as ``skip`` and ``max_steps: 1.5`` trained. :func:`problems` applies one set of
rules to a mapping of values, wherever they came from, and returns every problem at once (one line
each, naming the key, the value and what is allowed) rather than stopping at the first.

The rules of a field come from
* its type annotation: ``int`` (not ``1.5``, not ``"abc"``, not ``true``), ``float`` (an int is fine),
  ``bool`` (a YAML ``true``/``false``: a quoted ``"true"`` is refused, see below), ``str``,
  ``list[X]``, ``X | None`` (``null`` allowed), ``Literal[...]`` and ``Enum`` (their values);
* ``choices`` in the field's metadata (each item of a list field);
* a :class:`Rule` in the metadata under :data:`RULE` (``core.config.arg(..., gt=0, lt=1,
  validate=fn)``) or, for dataclasses we do not own (transformers' training arguments), one the
  section supplies by field name.

Types YAML cannot produce (``GenerationConfig``, ...) accept what their annotation's other members
accept, and an annotation this module does not know accepts anything: it checks what the recipe
declares, it does not second-guess a library's own ``__post_init__``.

Strings: PyYAML (YAML 1.1) reads ``1e-5`` as a string, so a numeric field takes a string that the
command line would convert (``float("1e-5")``), and the converted number is what the stage gets. A
bool field takes only a YAML boolean: a quoted ``"false"`` in a file is refused with the fix (drop
the quotes), because the same mistake in a string field (``packing: off`` unquoted is the boolean
False) cannot be repaired silently either, so the rule is the same both ways: a file says what it
means with YAML's own types. On the command line argparse converts: ``--flag``, ``--flag true``
(or ``false``, ``yes``, ``no``, ``1``, ``0``: transformers' ``string_to_bool``) and ``--no_flag``
for a flag that defaults to true.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

# The metadata key of a field's Rule; config's parser removes it before argparse sees the metadata.
RULE = "rule"


@dataclass(frozen=True)
class Rule:
    """What a value must satisfy beyond its type and choices: bounds, and a validator function.

    ``validate(value)`` raises ``ValueError`` whose message says what is allowed; it runs at every
    parse, before any stage works, so it must be pure and cheap, and importable without heavy
    dependencies. An args module attaches it (core imports neither side of the recipe).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    validate: Callable[[Any], object] | None = None

    def has_bounds(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def describe(self, name: str) -> str:
        """The bounds as an inequality: ``0 < test_fraction < 1``, ``folds >= 2``."""
        low = ("<", self.gt) if self.gt is not None else ("<=", self.ge) if self.ge is not None else None
        high = ("<", self.lt) if self.lt is not None else ("<=", self.le) if self.le is not None else None
        if low and high:
            return f"{_num(low[1])} {low[0]} {name} {high[0]} {_num(high[1])}"
        if low:  # "folds >= 2" reads better than "2 <= folds"
            return f"{name} {low[0].replace('<', '>')} {_num(low[1])}"
        return f"{name} {high[0]} {_num(high[1])}" if high else name

    def problem(self, name: str, value: Any) -> str | None:
        """Why ``value`` breaks the rule (None: it does not)."""
        if self.has_bounds() and isinstance(value, (int, float)) and not isinstance(value, bool):
            inside = not math.isnan(value) and all(
                [
                    self.ge is None or value >= self.ge,
                    self.gt is None or value > self.gt,
                    self.le is None or value <= self.le,
                    self.lt is None or value < self.lt,
                ]
            )
            if not inside:
                return f"is out of range: {self.describe(name)}"
        if self.validate is not None:
            try:
                self.validate(value)
            except ValueError as err:
                return f"is not valid: {err}"
        return None


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Spec:
    """One field as validation sees it: its resolved annotation, choices and rule."""

    type: Any
    choices: tuple | None
    rule: Rule | None


@functools.cache
def specs(cls: type, extra_rules: tuple[tuple[str, Rule], ...] = ()) -> dict[str, Spec]:
    """The :class:`Spec` of every init field of a dataclass; ``extra_rules`` for fields whose
    metadata carries none (another library's dataclass)."""
    hints = typing.get_type_hints(cls)  # resolves `from __future__ import annotations`
    extra = dict(extra_rules)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        choices = f.metadata.get("choices")
        out[f.name] = Spec(
            hints[f.name],
            tuple(choices) if choices is not None else None,
            f.metadata.get(RULE) or extra.get(f.name),
        )
    return out


def problems(
    values: Mapping[str, Any], specs: Mapping[str, Spec], label: Callable[[str, Any], str]
) -> tuple[dict, list[str]]:
    """Check ``values`` (keys must be in ``specs``; unknown keys are the caller's concern).

    Returns the values with numeric strings converted, and one line per problem:
    ``label(key, value)`` followed by what is wrong and what is allowed.
    """
    out = dict(values)
    found = []
    for key, value in values.items():
        spec = specs[key]
        why, out[key] = _problem(spec, key, value)
        if why:
            found.append(f"{label(key, value)} {why}")
    return out, found


def _problem(spec: Spec, key: str, value: Any) -> tuple[str | None, Any]:
    ok, value = _accept(spec.type, value)
    # A field with choices names them even when the type is wrong (`packing: off` is YAML's False).
    allowed = f"one of: {', '.join(map(str, spec.choices))}" if spec.choices is not None else None
    if not ok:
        expected = allowed if allowed is not None and not _is_list(spec.type) else _describe(spec.type)
        return f"is not {expected}{_hint(spec.type, value)}", value
    if value is None:  # an Optional field's null: choices and rules are about real values
        return None, value
    if allowed is not None:
        bad = [v for v in value if not _in_choices(v, spec.choices)] if isinstance(value, list) else []
        if bad:
            return f"has item(s) {', '.join(map(str, bad))} not {allowed}", value
        if not isinstance(value, list) and not _in_choices(value, spec.choices):
            return f"is not {allowed}", value
    if spec.rule is not None:
        return spec.rule.problem(key, value), value
    return None, value


def _in_choices(value: Any, choices: Iterable) -> bool:
    if isinstance(value, enum.Enum):
        value = value.value
    return value in choices


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _union_members(tp: Any) -> tuple | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = typing.get_args(tp)
        # `SomeEnum | str` is how transformers spells "a member of SomeEnum, or its string value":
        # the parser offers the enum's values only, and so do we.
        if str in members and any(_is_enum(m) for m in members):
            members = tuple(m for m in members if m is not str)
        return members
    return None


def _accept(tp: Any, value: Any) -> tuple[bool, Any]:
    """(value fits ``tp``, the value converted): exact types first, then numeric strings."""
    members = _union_members(tp)
    if members is not None:
        for convert in (False, True):
            for m in members:
                ok, v = _check(m, value, convert)
                if ok:
                    return True, v
        return False, value
    ok, v = _check(tp, value, False)
    return (ok, v) if ok else _check(tp, value, True)


def _check(tp: Any, value: Any, convert: bool) -> tuple[bool, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _union_members(tp) is not None:
        return _accept(tp, value)
    if tp is Any:
        return True, value
    if tp is type(None):
        return value is None, value
    if origin is Literal:
        return value in args and type(value) in {type(a) for a in args}, value
    if _is_enum(tp):
        return isinstance(value, tp) or value in {m.value for m in tp}, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp in (int, float):
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int) or (tp is float and isinstance(value, float)):
            return True, tp(value) if tp is float else value
        if convert and isinstance(value, str):
            try:
                return True, tp(value.strip())
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin is list or tp is list:
        if not isinstance(value, list):
            return False, value
        if not args:
            return True, value
        items = [_accept(args[0], v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value  # an annotation we cannot check: the library's own code will


def _describe(tp: Any) -> str:
    """What a type allows, in words: ``an integer``, ``a list of strings``, ``one of: a, b``."""
    members = _union_members(tp)
    if members is not None:
        parts = [_describe(m) for m in members if m is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return text + (" or null" if type(None) in members else "")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of: " + ", ".join(map(str, args))
    if _is_enum(tp):
        return "one of: " + ", ".join(str(m.value) for m in tp)
    if origin is list or tp is list:
        return f"a list of {_PLURAL.get(args[0], 'values')}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return _WORDS.get(tp, f"a {getattr(tp, '__name__', tp)}")


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _is_list(tp: Any) -> bool:
    return tp is list or typing.get_origin(tp) is list


def _hint(tp: Any, value: Any) -> str:
    """The usual YAML slip behind a wrong type, and its fix."""
    members = _union_members(tp)
    if members is not None:  # `str | None` hints like `str`
        real = [m for m in members if m is not type(None)]
        tp = real[0] if len(real) == 1 else tp
    if isinstance(value, bool) and tp is str:
        return ' (YAML reads unquoted yes/no/on/off/true/false as a boolean: quote the value, e.g. "off")'
    if tp is bool and isinstance(value, str):
        return " (write true or false without quotes)"
    if tp is str and isinstance(value, (int, float)):
        return " (quote the value to make it a string)"
    if _is_list(tp) and not isinstance(value, list):
        return " (write a YAML list, e.g. [a, b])"
    return ""
