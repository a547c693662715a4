"""espeak-ng: every voice it reports for a language (English by default), crossed with every voice
variant, rate and pitch jittered.

Voices are named ``<base>`` or ``<base>+<variant>``: ``en-gb-scotland+f3``, ``en-029+klatt2``.
Bases come from ``espeak-ng --voices=<language>`` (``en``: en-us, en-gb-scotland, ...; ``es``: es,
es-419) and are passed to espeak-ng by their file
(``gmw/en-GB-scotland``), so a name always means the same voice whatever else is installed.
MBROLA voices (``mb/...``) are kept only when their MBROLA database and the ``mbrola`` program are
installed: without them espeak-ng fails on ``mb-en1`` and silently speaks en-gb for ``en-uk``, and
a voice that is really another voice would count twice. Variants come from
``espeak-ng --voices=variant``; espeak-ng ignores an unknown variant without an error, so only
listed ones are accepted.

Text goes to espeak-ng on stdin (a text starting with ``-`` cannot be taken for an option) and the
WAV comes back on stdout; no shell is involved.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.candidates.tts.base import (
    DEFAULT_TIMEOUT,
    Engine,
    EngineUnavailable,
    decode_wav,
    excerpt,
    listing_output,
    run_engine,
)

log = logging.getLogger(__name__)

INSTALL = "install it with `apt-get install espeak-ng`"
# espeak-ng's defaults are 175 wpm and pitch 50 (of 0-99); +-20 wpm and +-15 pitch vary the
# speaker audibly while staying inside what the voices were tuned for.
RATE_RANGE = (150, 190)
PITCH_RANGE = (35, 65)
# Where espeak-ng looks for an MBROLA database (its own error message lists these).
MBROLA_DIRS = ("/usr/share/mbrola/{db}", "/usr/share/mbrola/{db}/{db}", "/usr/share/mbrola/voices/{db}")

# A row of `espeak-ng --voices`: Pty, Language, Age/Gender, VoiceName, File, (Other Languages)*.
# The file may contain a space (the variant "!v/Mr serious"), so it is everything up to the
# optional "(lang pty)" groups.
_ROW = re.compile(r"^\s*\d+\s+(?P<language>\S+)\s+\S+\s+\S+\s+(?P<file>.+?)\s*(?:\(\S+ \d+\)\s*)*$")
_MBROLA_FILE = re.compile(r"^mb/mb-(?P<db>[a-z]+\d+)")


@dataclass(frozen=True)
class ListedVoice:
    """One row of ``espeak-ng --voices``: its language and its voice file (``gmw/en-US``, ``!v/f3``)."""

    language: str
    file: str


def parse_listing(text: str) -> list[ListedVoice]:
    """The rows of an ``espeak-ng --voices[=lang]`` listing, header skipped."""
    rows = []
    for line in text.splitlines()[1:]:
        m = _ROW.match(line)
        if m:
            rows.append(ListedVoice(m["language"], m["file"]))
        elif line.strip():
            log.warning("espeak-ng: unparsed voice listing line %r", line)
    return rows


def mbrola_installed(database: str) -> bool:
    """Whether espeak-ng can use the MBROLA database ``database`` (``en1``, ``us2``, ...)."""
    return shutil.which("mbrola") is not None and any(
        Path(d.format(db=database)).exists() for d in MBROLA_DIRS
    )


def base_voices(
    listing: list[ListedVoice], has_mbrola: Callable[[str], bool] = mbrola_installed
) -> dict[str, ListedVoice]:
    """Usable base voices by name: one per voice file, variants and missing MBROLA voices left out."""
    voices: dict[str, ListedVoice] = {}
    seen_files: set[str] = set()
    skipped_mbrola = []
    for row in listing:
        if row.file.startswith("!v/") or row.file in seen_files:
            continue  # a variant listed under a language (Storm), or a file listed twice
        stem = row.file.rsplit("/", 1)[-1]
        if row.file.startswith("mb/"):
            m = _MBROLA_FILE.match(row.file)
            if not m or not has_mbrola(m["db"]):
                skipped_mbrola.append(stem)
                continue
            name = stem  # several MBROLA voices share a language (en-us): name them by file
        else:
            name = row.language if row.language not in voices else stem
        voices[name] = row
        seen_files.add(row.file)
    if skipped_mbrola:
        log.debug(
            "espeak-ng: %d MBROLA voices skipped (database not installed): %s",
            len(skipped_mbrola),
            skipped_mbrola,
        )
    return voices


def variant_names(listing: list[ListedVoice]) -> list[str]:
    """Variant names as ``+<name>`` takes them (the file name: ``f3``, ``klatt2``, ``Mr serious``)."""
    names = [row.file[len("!v/") :] for row in listing if row.file.startswith("!v/")]
    return list(dict.fromkeys(names))


@functools.cache
def _listing(executable: str, which: str) -> tuple[ListedVoice, ...]:
    """``espeak-ng --voices=<which>``, parsed; cached because every engine instance asks."""
    return tuple(
        parse_listing(listing_output([executable, f"--voices={which}"], "espeak-ng voice listing", INSTALL))
    )


class EspeakEngine(Engine):
    name = "espeak-ng"
    install_hint = INSTALL

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        executable: str = "espeak-ng",
        rate_range: tuple[int, int] = RATE_RANGE,
        pitch_range: tuple[int, int] = PITCH_RANGE,
        language: str = "en",
    ) -> None:
        super().__init__(timeout)
        self.executable = executable
        self.language = language
        self.rate_range = (int(rate_range[0]), int(rate_range[1]))
        self.pitch_range = (int(pitch_range[0]), int(pitch_range[1]))
        self._bases: dict[str, ListedVoice] = {}

    def available(self) -> bool:
        return shutil.which(self.executable) is not None

    def _list_voices(self) -> list[str]:
        self._bases = base_voices(list(_listing(self.executable, self.language)))
        variants = variant_names(list(_listing(self.executable, "variant")))
        if not self._bases:
            raise EngineUnavailable(
                f"espeak-ng lists no voice for language {self.language!r}; {INSTALL} (espeak-ng-data holds the voices)"
            )
        log.debug(
            "espeak-ng: %d %s base voices x (%d variants + none)",
            len(self._bases),
            self.language,
            len(variants),
        )
        return [f"{base}{suffix}" for base in self._bases for suffix in ["", *(f"+{v}" for v in variants)]]

    def accent(self, voice: str) -> str:
        self._check_voice(voice)
        return self._bases[voice.split("+", 1)[0]].language

    def _draw_params(self, voice: str, rng: np.random.Generator) -> dict[str, Any]:
        return {
            "rate_wpm": int(rng.integers(self.rate_range[0], self.rate_range[1], endpoint=True)),
            "pitch": int(rng.integers(self.pitch_range[0], self.pitch_range[1], endpoint=True)),
        }

    def _synthesize(self, text: str, voice: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
        base, _, variant = voice.partition("+")
        spec = self._bases[base].file + (f"+{variant}" if variant else "")
        what = f"espeak-ng voice {voice!r} on {excerpt(text)}"
        # -b 1: the text on stdin is UTF-8, whatever the locale says.
        argv = [
            self.executable,
            "-v", spec,
            "-s", str(params["rate_wpm"]),
            "-p", str(params["pitch"]),
            "-b", "1",
            "--stdout",
        ]  # fmt: skip
        proc = run_engine(
            argv, stdin=text.encode("utf-8"), timeout=self.timeout, what=what, install_hint=INSTALL
        )
        return decode_wav(proc.stdout, what)
