"""The engine interface, its two errors, and the checks every engine shares.

An engine turns (text, voice, seed) into float32 mono samples at the engine's own rate. Every
random choice it makes (speaking rate, pitch, model noise) is drawn from ``seed`` by
``params_for``, so the caller can store those parameters as provenance and the same call gives
the same audio again.
"""

from __future__ import annotations

import io
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import soundfile as sf

# Output whose peak is below this (-60 dBFS, about 33 steps of 16-bit PCM) is not speech: an
# engine that failed without saying so (unknown characters, a voice that fell back to silence).
SILENCE_PEAK = 1e-3
# Longer texts are refused: 20,000 characters is about 20 minutes of speech, far past a 30 s ASR
# window, and even as 4-byte UTF-8 it stays under Linux's 128 KiB limit on one argument
# (flite takes its text as one argument).
MAX_TEXT_CHARS = 20_000
# Seconds one synthesis call may take. espeak-ng and flite speak a sentence in well under a
# second; a call this long is a hung process, not a long text.
DEFAULT_TIMEOUT = 60.0


class SynthesisError(RuntimeError):
    """One text could not be spoken; the caller logs it, counts it and goes on with the next."""


class EngineUnavailable(RuntimeError):
    """The engine (its program, package or model) is not installed; the message says how to get it."""


class Engine(ABC):
    """A TTS backend. Subclasses set ``name`` and ``install_hint`` and implement the hooks below."""

    name: ClassVar[str]
    # What to install, e.g. "apt-get install espeak-ng": every EngineUnavailable names it.
    install_hint: ClassVar[str]

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError(f"{self.name}: timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self._voice_list: list[str] | None = None
        self._voice_set: frozenset[str] = frozenset()

    # -- what subclasses provide --------------------------------------------------------------
    @abstractmethod
    def available(self) -> bool:
        """Whether the engine can run here (cheap: no synthesis, no model loading)."""

    @abstractmethod
    def _list_voices(self) -> list[str]:
        """Every usable voice, in a stable order (called once; ``voices`` caches it)."""

    @abstractmethod
    def _draw_params(self, voice: str, rng: np.random.Generator) -> dict[str, Any]:
        """The per-call parameters drawn from the seed (rate, pitch, ...), JSON-serializable."""

    @abstractmethod
    def _synthesize(self, text: str, voice: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
        """Samples (any float/int dtype, mono or not) and their rate; raise SynthesisError on failure."""

    def accent(self, voice: str) -> str:
        """Accent label of a voice (``en-us``, ``en-gb-scotland``, ...); empty when unknown."""
        return ""

    # -- the public interface -----------------------------------------------------------------
    def voices(self) -> list[str]:
        """Every voice this engine offers here (cached after the first call)."""
        if self._voice_list is None:
            self.require()
            voices = self._list_voices()
            if not voices:
                raise EngineUnavailable(
                    f"{self.name} is installed but reports no usable voice; {self.install_hint}"
                )
            self._voice_list, self._voice_set = voices, frozenset(voices)
        return list(self._voice_list)

    def params_for(self, voice: str, seed: int) -> dict[str, Any]:
        """The parameters ``synthesize(text, voice, seed)`` uses: deterministic, for provenance."""
        self._check_voice(voice)
        return self._draw_params(voice, np.random.default_rng(seed))

    def synthesize(self, text: str, voice: str, seed: int) -> tuple[np.ndarray, int]:
        """Speak ``text``: (float32 mono samples in [-1, 1], sample rate). Same arguments, same audio.

        Raises SynthesisError when this text fails (empty, too long, engine error, timeout,
        silent output), ValueError for a voice the engine does not have, and EngineUnavailable
        when the engine is not installed.
        """
        if not text.strip():
            raise SynthesisError(f"{self.name}: empty text")
        if len(text) > MAX_TEXT_CHARS:
            raise SynthesisError(
                f"{self.name}: text of {len(text)} characters is over the {MAX_TEXT_CHARS} limit"
            )
        if "\x00" in text:
            raise SynthesisError(f"{self.name}: text contains a NUL character: {excerpt(text)}")
        params = self.params_for(voice, seed)
        samples, rate = self._synthesize(text, voice, params)
        return check_audio(samples, f"{self.name} voice {voice!r} on {excerpt(text)}"), rate

    def require(self) -> None:
        """Raise EngineUnavailable, naming what to install, when the engine cannot run."""
        if not self.available():
            raise EngineUnavailable(f"TTS engine {self.name!r} is not available: {self.install_hint}")

    def _check_voice(self, voice: str) -> None:
        self.voices()
        if voice not in self._voice_set:
            sample = ", ".join(self._voice_list[:8])
            raise ValueError(
                f"{self.name} has no voice {voice!r}; it has {len(self._voice_set)}, e.g. {sample}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(timeout={self.timeout})"


def excerpt(text: str, limit: int = 60) -> str:
    """A short quoted excerpt of a text for error messages."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def check_audio(samples: np.ndarray, what: str) -> np.ndarray:
    """Float32 mono samples, or SynthesisError when they are empty, not finite or silent."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1 or x.size == 0:
        raise SynthesisError(f"{what}: no audio")
    if not np.isfinite(x).all():
        raise SynthesisError(f"{what}: audio contains NaN or infinite samples")
    peak = float(np.abs(x).max())
    if peak < SILENCE_PEAK:
        raise SynthesisError(f"{what}: silent output (peak {peak:.1e})")
    return x


def decode_wav(data: bytes, what: str) -> tuple[np.ndarray, int]:
    """Samples and rate of WAV bytes an engine wrote (espeak-ng's streamed header included)."""
    if not data:
        raise SynthesisError(f"{what}: the engine wrote no audio")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise SynthesisError(f"{what}: unreadable WAV output ({e})") from e
    return samples.mean(axis=1), int(rate)


def run_engine(
    argv: Sequence[str], *, stdin: bytes | None, timeout: float, what: str, install_hint: str
) -> subprocess.CompletedProcess[bytes]:
    """Run one engine process (an argument list, never a shell); its stdout and stderr are captured.

    A non-zero exit or a timeout is a SynthesisError (the process is killed); a missing
    program is EngineUnavailable.
    """
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise SynthesisError(f"{what}: {argv[0]} timed out after {timeout:g} s") from e
    except FileNotFoundError as e:
        raise EngineUnavailable(f"{argv[0]} not found: {install_hint}") from e
    if proc.returncode != 0:
        raise SynthesisError(f"{what}: {argv[0]} exited with {proc.returncode}: {tail(proc.stderr)}")
    return proc


def listing_output(argv: list[str], what: str, install_hint: str) -> str:
    """Stdout of an engine's voice-listing command (no stdin, the default timeout), as text."""
    proc = run_engine(argv, stdin=None, timeout=DEFAULT_TIMEOUT, what=what, install_hint=install_hint)
    return proc.stdout.decode("utf-8", "replace")


def tail(stderr: bytes, limit: int = 300) -> str:
    """The end of a process's stderr, decoded, for an error message."""
    text = stderr.decode("utf-8", "replace").strip()
    return text[-limit:] if text else "(no message)"
