"""How fast an engine speaks, process start included: audio seconds per wall second on one core.

One worker calls ``synthesize`` once per text, exactly as the generate stage does, so the figure
includes starting the engine's process, writing and parsing the WAV. CPU time (this process and
the engine processes it waited for) is measured too: on a machine shared with other jobs the
wall figure drops while audio seconds per CPU second stays what one free core would do.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from data_prep.candidates.tts.base import Engine, SynthesisError

log = logging.getLogger(__name__)


@dataclass
class SpeedReport:
    engine: str
    calls: int
    failures: int
    audio_seconds: float
    wall_seconds: float
    cpu_seconds: float  # user + system, this process and its finished child processes

    @property
    def x_real_time(self) -> float:
        """Audio seconds produced per wall-clock second, one worker."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def x_real_time_cpu(self) -> float:
        """Audio seconds produced per CPU second: the speed of one core that is not shared."""
        return self.audio_seconds / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "x_real_time": self.x_real_time, "x_real_time_cpu": self.x_real_time_cpu}


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_speed(engine: Engine, texts: Sequence[str], voices: Sequence[str], seed: int = 0) -> SpeedReport:
    """Speak text i with voice i mod len(voices) and seed ``seed + i``, one call after another.

    A call that fails is counted (its time stays in the total). Warm up an engine that loads a
    model on its first call before measuring: a one-off load is not a per-utterance cost.
    """
    if not texts or not voices:
        raise ValueError("measure_speed needs at least one text and one voice")
    audio = 0.0
    failures = 0
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    for i, text in enumerate(tqdm(texts, desc=f"tts {engine.name}", leave=False, disable=None)):
        voice = voices[i % len(voices)]
        try:
            samples, rate = engine.synthesize(text, voice, seed + i)
        except SynthesisError as e:
            failures += 1
            log.warning("speed run: %s", e)
            continue
        audio += len(samples) / rate
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    if failures:
        log.warning("speed run of %s: %d of %d calls failed", engine.name, failures, len(texts))
    return SpeedReport(engine.name, len(texts), failures, audio, wall, cpu)
