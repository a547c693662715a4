"""What every model family provides: the ``ASRModel`` interface and the behaviour the families share."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _check_16k(audio: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float32) for a in audio]
    for i, a in enumerate(out):
        if a.ndim != 1:
            raise ValueError(f"audio[{i}] has shape {a.shape}; pass mono 16 kHz float32 arrays")
    return out


class ASRModel(ABC):
    """A model with its processor, and every behaviour that differs between model families."""

    kind: ClassVar[str]
    # Whether several utterances can share one training example (a fixed-size input window).
    packable: ClassVar[bool]
    # The largest input the model takes, in seconds (None: no architectural limit).
    max_input_seconds: ClassVar[float | None]

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def transcribe(
        self, audio: Sequence[np.ndarray], batch_size: int = 16, num_beams: int = 1, pack: bool = False
    ) -> list[str]:
        """Transcripts of 16 kHz mono float32 arrays, in order.

        ``pack``: several short clips share one input window (``packed``), for families whose input
        is a fixed window (``packable``); ``batch_size`` then counts windows. Others ignore it.
        """
        audio = _check_16k(audio)
        self.model.eval()
        with torch.inference_mode():
            if pack and self.packable:
                return self._transcribe_packed(audio, batch_size, num_beams)
            out: list[str] = []
            for start in range(0, len(audio), batch_size):
                out.extend(self._transcribe_batch(audio[start : start + batch_size], num_beams))
        return out

    @abstractmethod
    def _transcribe_batch(self, audio: list[np.ndarray], num_beams: int) -> list[str]:
        """Transcripts of one batch (called under inference mode)."""

    def _transcribe_packed(self, audio: list[np.ndarray], batch_size: int, num_beams: int) -> list[str]:
        """Transcripts of clips decoded several to a window (families with ``packable``)."""
        raise NotImplementedError(f"{type(self).__name__} has no packed decoding")

    # --- training -----------------------------------------------------------------------------
    @abstractmethod
    def collator(self) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        """The training/evaluation collator of examples ``{"audio", "text"}``."""

    @abstractmethod
    def trainer_base(self) -> type:
        """The transformers Trainer class this family trains with."""

    @abstractmethod
    def label_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Length of each text's training label, in the units the model's limit is counted in."""

    def length_problems(self, durations: np.ndarray, texts: Sequence[str], targs) -> dict[str, np.ndarray]:
        """Boolean masks of rows that cannot be trained on, by reason (checked before training so a
        too-long example is a counted, logged drop, never a crash mid-run)."""
        limit = (
            targs.max_audio_seconds
            if self.max_input_seconds is None
            else min(targs.max_audio_seconds, self.max_input_seconds)
        )
        return {f"audio_over_{limit:g}s": np.asarray(durations) > limit}

    @abstractmethod
    def configure_training_args(self, training_args, targs) -> None:
        """Adjust transformers' training arguments to this family (called once, before the Trainer)."""

    def prepare_for_training(self, targs) -> None:
        """Apply the training options that touch the model: freezing, SpecAugment, LoRA."""
        cfg = self.model.config
        cfg.apply_spec_augment = bool(targs.spec_augment)
        cfg.mask_time_prob = float(targs.mask_time_prob) if targs.spec_augment else 0.0
        cfg.mask_feature_prob = float(targs.mask_feature_prob) if targs.spec_augment else 0.0
        self._freeze(targs)
        if targs.lora:
            # Imported only here: peft is the optional extra `lora` (pip install -e '.[lora]').
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=targs.lora_r,
                lora_alpha=targs.lora_alpha,
                lora_dropout=targs.lora_dropout,
                target_modules=list(targs.lora_target_modules),
                modules_to_save=self._lora_modules_to_save(targs),
            )
            self.model = get_peft_model(self.model, lora)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        logger.info(
            "%s: %d of %d parameters trainable (%.1f%%)",
            self.kind,
            trainable,
            total,
            100 * trainable / max(total, 1),
        )

    @abstractmethod
    def _freeze(self, targs) -> None:
        """Freeze the parts ``targs`` asks to keep fixed."""

    def _lora_modules_to_save(self, targs) -> list[str] | None:
        return None

    @abstractmethod
    def decode_predictions(self, pred) -> tuple[list[str], list[str]]:
        """(hypotheses, references) from a Trainer ``EvalPrediction``."""

    preprocess_logits_for_metrics: Callable | None = None

    def save(self, folder: str | Path) -> None:
        """Save a plain transformers folder (LoRA adapters merged) with its processor."""
        model = self.model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(str(folder))
        self.processor.save_pretrained(str(folder))
        for stale in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
            # transformers would load a folder holding adapter_config.json as base + adapter
            (Path(folder) / stale).unlink(missing_ok=True)
