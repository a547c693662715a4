"""flite: every installed general-purpose voice (kal, kal16, awb, rms, slt), rate and pitch jittered.

The text is one argument after ``-t`` (flite reads it as text, never as an option or a file
name, even when it starts with ``-``); the WAV comes back on stdout. flite writes its header
after synthesizing the whole utterance, so the header sizes are right even on a pipe.
"""

from __future__ import annotations

import functools
import logging
import shutil
from typing import Any

import numpy as np

from data_prep.candidates.tts.base import (
    DEFAULT_TIMEOUT,
    Engine,
    decode_wav,
    excerpt,
    listing_output,
    run_engine,
)

log = logging.getLogger(__name__)

INSTALL = "install it with `apt-get install flite`"
# duration_stretch multiplies every segment's duration; f0_shift multiplies the voice's own F0
# (so a female voice stays female). +-13% rate and +-10% pitch (about 1.7 semitones) vary the
# speaker without leaving the range the voices sound natural in.
STRETCH_RANGE = (0.87, 1.15)
F0_SHIFT_RANGE = (0.9, 1.1)
# Limited-domain voices (awb_time) only speak the time of day and mumble anything else.
LIMITED_DOMAIN_SUFFIXES = ("_time",)
# Accent of the voices flite ships: awb is a Scottish English speaker, the others are American.
ACCENTS = {"kal": "en-us", "kal16": "en-us", "rms": "en-us", "slt": "en-us", "awb": "en-gb-scotland"}


def parse_voice_list(output: str) -> list[str]:
    """Voices from ``flite -lv`` ("Voices available: kal awb_time kal16 ..."), limited-domain ones left out."""
    _, _, names = output.partition(":")
    voices = [v for v in names.split() if not v.endswith(LIMITED_DOMAIN_SUFFIXES)]
    return list(dict.fromkeys(voices))


@functools.cache
def _voice_list(executable: str) -> tuple[str, ...]:
    return tuple(parse_voice_list(listing_output([executable, "-lv"], "flite -lv", INSTALL)))


class FliteEngine(Engine):
    name = "flite"
    install_hint = INSTALL

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        executable: str = "flite",
        stretch_range: tuple[float, float] = STRETCH_RANGE,
        f0_shift_range: tuple[float, float] = F0_SHIFT_RANGE,
    ) -> None:
        super().__init__(timeout)
        self.executable = executable
        self.stretch_range = (float(stretch_range[0]), float(stretch_range[1]))
        self.f0_shift_range = (float(f0_shift_range[0]), float(f0_shift_range[1]))

    def available(self) -> bool:
        return shutil.which(self.executable) is not None

    def _list_voices(self) -> list[str]:
        return list(_voice_list(self.executable))

    def accent(self, voice: str) -> str:
        self._check_voice(voice)
        return ACCENTS.get(voice, "")

    def _draw_params(self, voice: str, rng: np.random.Generator) -> dict[str, Any]:
        # Rounded to what is passed on the command line, so the record is exactly what ran.
        return {
            "duration_stretch": round(float(rng.uniform(*self.stretch_range)), 3),
            "f0_shift": round(float(rng.uniform(*self.f0_shift_range)), 3),
        }

    def _synthesize(self, text: str, voice: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
        what = f"flite voice {voice!r} on {excerpt(text)}"
        argv = [
            self.executable,
            "-voice", voice,
            "--setf", f"duration_stretch={params['duration_stretch']}",
            "--setf", f"f0_shift={params['f0_shift']}",
            "-o", "/dev/stdout",
            "-t", text,
        ]  # fmt: skip
        proc = run_engine(argv, stdin=None, timeout=self.timeout, what=what, install_hint=INSTALL)
        return decode_wav(proc.stdout, what)
