"""TTS backends behind one interface, for the generate stage's synthetic candidates.

    from data_prep.candidates import tts
    engine = tts.get_engine("espeak-ng", timeout=30)
    if engine.available():
        samples, rate = engine.synthesize("Please hold the line.", "en-gb-scotland+f3", seed=7)
        provenance = {"engine": engine.name, "voice": "en-gb-scotland+f3", "seed": 7,
                      **engine.params_for("en-gb-scotland+f3", 7)}

Engines: ``espeak-ng``, ``flite`` and ``festival`` run as processes (argument lists, never a
shell, a timeout on every call); ``piper`` (optional extra) and ``hf`` (transformers VITS /
SpeechT5, selected with ``model=<Hub id or folder>``) run in this process. ``synthesize`` raises
``SynthesisError`` for one text that failed (log it, count it, go on) and ``EngineUnavailable``,
naming what to install, when the engine is missing.
"""

from __future__ import annotations

import functools
import importlib

from data_prep.candidates.tts.base import SILENCE_PEAK, Engine, EngineUnavailable, SynthesisError
from data_prep.candidates.tts.speed import SpeedReport, measure_speed

# Engine name -> "module:class", imported on first use (hf pulls in torch and transformers).
_REGISTRY = {
    "espeak-ng": "data_prep.candidates.tts.espeak:EspeakEngine",
    "flite": "data_prep.candidates.tts.flite:FliteEngine",
    "festival": "data_prep.candidates.tts.festival:FestivalEngine",
    "piper": "data_prep.candidates.tts.piper:PiperEngine",
    "hf": "data_prep.candidates.tts.hf:HFEngine",
}
ENGINES = tuple(_REGISTRY)


def get_engine(name: str, **options) -> Engine:
    """A new engine ``name`` built with ``options`` (``timeout`` for all; see each class).

    ``name`` is one of ENGINES, or ``module:Class`` for an engine of your own (any class with
    ``available``, ``voices`` and ``synthesize``; ``accent`` and ``params_for`` are optional).
    Nothing is checked or loaded yet: call ``available()`` to skip a missing engine, or let
    ``voices()`` / ``synthesize()`` raise EngineUnavailable.
    """
    if ":" in name:
        module, cls = name.split(":", 1)
    elif name in _REGISTRY:
        module, cls = _REGISTRY[name].split(":")
    else:
        raise ValueError(
            f"unknown TTS engine {name!r}; known engines: {', '.join(ENGINES)} (or `module:Class` of your own)"
        )
    return getattr(importlib.import_module(module), cls)(**options)


# One instance per process and setting: engines cache their voice listing and loaded models, and
# the generate stage asks for the same engine while planning and again for every job of a shard.
@functools.cache
def cached_engine(name: str, timeout: float, hf_model: str = "", language: str = "en") -> Engine:
    """The engine as the generate stage builds it: a registered engine with ``timeout`` (the ``hf``
    engine with its model, Hub id or folder; espeak-ng listing the voices of ``language``); a
    ``module:Class`` engine with no arguments. The other engines list their fixed voices whatever
    the language: the plan skips those whose accent is another language's."""
    if ":" in name:
        return get_engine(name)
    options: dict = {"model": hf_model} if name == "hf" and hf_model else {}
    if name == "espeak-ng":
        options["language"] = language
    return get_engine(name, timeout=timeout, **options)


__all__ = [
    "ENGINES",
    "SILENCE_PEAK",
    "Engine",
    "EngineUnavailable",
    "SpeedReport",
    "SynthesisError",
    "cached_engine",
    "get_engine",
    "measure_speed",
]
