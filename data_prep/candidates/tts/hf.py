"""transformers text-to-speech models, selected by Hub id or local folder (GPU boxes; CPU works, slowly).

Supported: VITS (``facebook/mms-tts-eng`` and the other MMS-TTS checkpoints; multi-speaker VITS
models get one voice per speaker) and SpeechT5 (``microsoft/speecht5_tts`` with the HiFi-GAN
vocoder and speaker x-vectors from a ``.npy`` file, one voice per row).

Both models sample noise (VITS: durations and the flow prior; SpeechT5: prenet dropout, which
stays on at inference), so each call seeds torch with a seed drawn from the caller's seed, inside
``torch.random.fork_rng`` so the caller's own random state is left alone. The model runs in this
process, so ``timeout`` does not apply: VITS computes the whole utterance in one forward pass and
SpeechT5 stops at 20 spectrogram frames per input token at most.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.candidates.tts.base import DEFAULT_TIMEOUT, Engine, EngineUnavailable, SynthesisError, excerpt

log = logging.getLogger(__name__)

INSTALL = (
    "pass model=<Hub id or local folder> of a VITS or SpeechT5 checkpoint (e.g. facebook/mms-tts-eng); "
    "it needs torch and transformers (`pip install -e .`)"
)
# VITS speaking_rate divides phoneme durations; +-13% like the other engines' rate jitter.
RATE_RANGE = (0.87, 1.15)
SUPPORTED = ("vits", "speecht5")


class HFEngine(Engine):
    name = "hf"
    install_hint = INSTALL

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        model: str = "",
        device: str = "auto",
        speaker_embeddings: str = "",
        vocoder: str = "microsoft/speecht5_hifigan",
        rate_range: tuple[float, float] = RATE_RANGE,
    ) -> None:
        """``model``: Hub id or folder. ``device``: ``auto`` (cuda when present), ``cpu``, ``cuda:1``...
        ``speaker_embeddings``: SpeechT5 only, a ``.npy`` of x-vectors (n_speakers x 512).
        ``vocoder``: SpeechT5 only, the HiFi-GAN that turns its spectrograms into audio."""
        super().__init__(timeout)
        self.model = model
        self.device = device
        self.speaker_embeddings = speaker_embeddings
        self.vocoder = vocoder
        self.rate_range = (float(rate_range[0]), float(rate_range[1]))
        self._loaded: dict[str, Any] | None = None

    def available(self) -> bool:
        return bool(self.model) and all(
            importlib.util.find_spec(m) is not None for m in ("torch", "transformers")
        )

    def __repr__(self) -> str:
        return f"HFEngine(model={self.model!r}, device={self.device!r})"

    # -- loading ----------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        if self._loaded is not None:
            return self._loaded
        self.require()
        # transformers' model classes take seconds to import: only an engine that loads a model
        # pays for them (planning lists `hf` beside the other engines even without a model).
        from transformers import AutoConfig, AutoTokenizer

        if self.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device)
        try:
            config = AutoConfig.from_pretrained(self.model)
            if config.model_type not in SUPPORTED:
                raise ValueError(
                    f"hf engine: {self.model} is a {config.model_type!r} model; supported: {SUPPORTED}"
                )
            tokenizer = AutoTokenizer.from_pretrained(self.model)
            loaded: dict[str, Any] = {"kind": config.model_type, "tokenizer": tokenizer, "device": device}
            if config.model_type == "vits":
                from transformers import VitsModel

                loaded["model"] = VitsModel.from_pretrained(self.model).to(device).eval()
                loaded["rate"] = int(config.sampling_rate)
                n = int(config.num_speakers)
                loaded["speakers"] = [f"spk{i}" for i in range(n)] if n > 1 else ["default"]
            else:
                from transformers import SpeechT5ForTextToSpeech, SpeechT5HifiGan

                loaded["model"] = SpeechT5ForTextToSpeech.from_pretrained(self.model).to(device).eval()
                vocoder = SpeechT5HifiGan.from_pretrained(self.vocoder).to(device).eval()
                loaded["vocoder"], loaded["rate"] = vocoder, int(vocoder.config.sampling_rate)
                loaded["xvectors"] = self._xvectors(int(config.speaker_embedding_dim))
                loaded["speakers"] = [f"spk{i}" for i in range(len(loaded["xvectors"]))]
        except (OSError, ImportError) as e:
            # OSError: not in the cache and no network (HF_HUB_OFFLINE=1); ImportError: a tokenizer
            # dependency such as sentencepiece (SpeechT5) is missing.
            raise EngineUnavailable(
                f"hf engine cannot load {self.model!r}: {e}. Download it on a machine with network access "
                "(`hf download <id>`) or pass a local folder; install missing packages with pip."
            ) from e
        log.info(
            "hf: loaded %s (%s, %d voices) on %s", self.model, loaded["kind"], len(loaded["speakers"]), device
        )
        self._loaded = loaded
        return loaded

    def _xvectors(self, dim: int) -> np.ndarray:
        if not self.speaker_embeddings:
            raise ValueError(
                f"hf engine: {self.model} is SpeechT5, which needs speaker_embeddings=<file.npy> "
                f"(speaker x-vectors, n x {dim}, e.g. rows of the CMU ARCTIC x-vector set)"
            )
        if not Path(self.speaker_embeddings).is_file():
            raise ValueError(f"hf engine: speaker_embeddings file {self.speaker_embeddings} not found")
        x = np.load(self.speaker_embeddings).astype(np.float32)
        x = x[None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != dim or len(x) == 0:
            raise ValueError(
                f"{self.speaker_embeddings}: expected speaker x-vectors of shape (n, {dim}), got {x.shape}"
            )
        return x

    # -- the engine interface ---------------------------------------------------------------------
    def _list_voices(self) -> list[str]:
        return list(self._load()["speakers"])

    def _draw_params(self, voice: str, rng: np.random.Generator) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model, "torch_seed": int(rng.integers(2**31))}
        if self._load()["kind"] == "vits":
            params["speaking_rate"] = round(float(rng.uniform(*self.rate_range)), 3)
        else:
            params["vocoder"] = self.vocoder
        return params

    def _synthesize(self, text: str, voice: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
        m = self._load()
        what = f"hf {self.model} voice {voice!r} on {excerpt(text)}"
        if not m["tokenizer"].tokenize(text):
            raise SynthesisError(f"{what}: no character of the text is in the model's vocabulary")
        input_ids = m["tokenizer"](text, return_tensors="pt")["input_ids"].to(m["device"])
        speaker = m["speakers"].index(voice)
        cuda = [m["device"].index or 0] if m["device"].type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.inference_mode():
            torch.manual_seed(params["torch_seed"])
            try:
                if m["kind"] == "vits":
                    extra = {"speaker_id": speaker} if len(m["speakers"]) > 1 else {}
                    wave = m["model"](
                        input_ids=input_ids, speaking_rate=params["speaking_rate"], **extra
                    ).waveform[0]
                else:
                    xvector = torch.from_numpy(m["xvectors"][speaker : speaker + 1]).to(m["device"])
                    wave = m["model"].generate_speech(input_ids, xvector, vocoder=m["vocoder"])
            except RuntimeError as e:  # e.g. CUDA out of memory on a very long text
                raise SynthesisError(f"{what}: {e}") from e
        return wave.float().cpu().numpy(), m["rate"]
