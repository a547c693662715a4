"""festival: every installed voice (``kal_diphone``, ``ked_diphone``, ``cmu_us_slt_arctic_hts``, ...), rate jittered.

``text2wave`` reads the text on stdin as plain text (never as Scheme) and writes the WAV to a
file in a private temporary folder: it fixes its header with a seek, which a pipe cannot do.
The only Scheme we pass is built from a voice name checked against festival's own voice list
and a number we drew, so no text can reach the interpreter.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.candidates.tts.base import (
    DEFAULT_TIMEOUT,
    Engine,
    SynthesisError,
    decode_wav,
    excerpt,
    listing_output,
    run_engine,
    tail,
)

log = logging.getLogger(__name__)

INSTALL = "install it with `apt-get install festival festvox-kallpc16k` (more voices: festvox-kdlpc16k, festvox-us-slt-hts)"
# Duration_Stretch multiplies every segment duration, as flite's duration_stretch does. Pitch is
# not jittered: festival's F0 models take voice-specific absolute targets, with no relative shift.
STRETCH_RANGE = (0.87, 1.15)
# A voice name becomes the Scheme call (voice_<name>): only plain identifiers are accepted.
_VOICE_NAME = re.compile(r"^[a-z0-9_]+$")
# festival prints "SIOD ERROR" and still exits 0 when its Scheme fails.
_SCHEME_ERROR = b"SIOD ERROR"
# Accents of the voices Debian packages (the rest are unknown: empty).
ACCENTS = {"kal_diphone": "en-us", "ked_diphone": "en-us", "cmu_us_slt_arctic_hts": "en-us"}


def parse_voice_list(output: str) -> list[str]:
    """Voice names from festival's ``(print (voice.list))``, e.g. ``(kal_diphone ked_diphone)``."""
    names = output.strip().strip("()").split()
    bad = [n for n in names if not _VOICE_NAME.match(n)]
    if bad:
        log.warning("festival: voices with unexpected names ignored: %s", bad)
    return list(dict.fromkeys(n for n in names if _VOICE_NAME.match(n)))


@functools.cache
def _voice_list(festival: str) -> tuple[str, ...]:
    argv = [festival, "--batch", "(print (voice.list))"]
    return tuple(parse_voice_list(listing_output(argv, "festival voice list", INSTALL)))


class FestivalEngine(Engine):
    name = "festival"
    install_hint = INSTALL

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        executable: str = "festival",
        text2wave: str = "text2wave",
        stretch_range: tuple[float, float] = STRETCH_RANGE,
    ) -> None:
        super().__init__(timeout)
        self.executable = executable
        self.text2wave = text2wave
        self.stretch_range = (float(stretch_range[0]), float(stretch_range[1]))

    def available(self) -> bool:
        return shutil.which(self.executable) is not None and shutil.which(self.text2wave) is not None

    def _list_voices(self) -> list[str]:
        return list(_voice_list(self.executable))

    def accent(self, voice: str) -> str:
        self._check_voice(voice)
        return ACCENTS.get(voice, "")

    def _draw_params(self, voice: str, rng: np.random.Generator) -> dict[str, Any]:
        stretch = round(float(rng.uniform(*self.stretch_range)), 3)
        # HTS voices (e.g. cmu_us_slt_arctic_hts) ignore Duration_Stretch: record what they really do.
        return {"duration_stretch": 1.0 if voice.endswith("_hts") else stretch}

    def _synthesize(self, text: str, voice: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
        what = f"festival voice {voice!r} on {excerpt(text)}"
        with tempfile.TemporaryDirectory(prefix="tts-festival-") as tmp:  # mode 0700: private
            wav = Path(tmp) / "out.wav"
            argv = [
                self.text2wave,
                "-o", str(wav),
                "-eval", f"(voice_{voice})",
                "-eval", f"(Parameter.set 'Duration_Stretch {params['duration_stretch']})",
            ]  # fmt: skip
            proc = run_engine(
                argv, stdin=text.encode("utf-8"), timeout=self.timeout, what=what, install_hint=INSTALL
            )
            if _SCHEME_ERROR in proc.stderr:
                raise SynthesisError(f"{what}: festival failed: {tail(proc.stderr)}")
            data = wav.read_bytes() if wav.exists() else b""
        return decode_wav(data, what)
