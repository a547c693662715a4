"""Batches from examples ``{"audio": float32 16 kHz array, "text": str}``: features on the fly.

Features are computed here, per batch, from the decoded waveform, never stored per row (the HF
example caches ~960 KB of log-mel floats per utterance). The label side also lives here, so the
text a model is trained on and the text its length guards measure are made by the same function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import torch

from core import schema

IGNORE_INDEX = -100  # positions the loss skips (transformers' convention)


def whisper_label_text(text: str) -> str:
    """Whisper's target text: one leading space, as in OpenAI's training data and decoding (the
    first word is the token ' Hello', not 'Hello'), so fine-tuning starts from its own habits."""
    return " " + text.strip()


_NOT_CTC = re.compile(r"[^\w' ]+")


def ctc_text(text: str) -> str:
    """The characters a CTC head spells: lower case letters, digits, apostrophes and single spaces.
    Punctuation and casing are dropped because scoring normalizes them away and a character
    head would otherwise spend outputs on them."""
    return " ".join(_NOT_CTC.sub(" ", text.lower().replace("_", " ")).split())


def pad_labels(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Right-pad label id lists with IGNORE_INDEX into one tensor."""
    width = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def whisper_label_ids(tokenizer, texts: Sequence[str], decoder_start_token_id: int) -> list[list[int]]:
    """Token ids the decoder is trained to emit: the prefix (language, task, no-timestamps), the
    text and end-of-text. The start token is dropped because the model prepends it itself when
    it shifts the labels right into decoder inputs."""
    ids = tokenizer([whisper_label_text(t) for t in texts], add_special_tokens=True).input_ids
    return [s[1:] if s and s[0] == decoder_start_token_id else s for s in ids]


class WhisperCollator:
    """log-mel features of 30-s windows + padded labels (+ the frame mask SpecAugment uses)."""

    def __init__(self, processor, decoder_start_token_id: int):
        self.processor = processor
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        audio = [np.asarray(e["audio"], dtype=np.float32) for e in examples]
        feats = self.processor.feature_extractor(
            audio, sampling_rate=schema.SAMPLE_RATE, return_tensors="pt", return_attention_mask=True
        )
        labels = whisper_label_ids(
            self.processor.tokenizer, [e["text"] for e in examples], self.decoder_start_token_id
        )
        return {
            "input_features": feats["input_features"],
            "attention_mask": feats["attention_mask"],
            "labels": pad_labels(labels),
        }


class CTCCollator:
    """Raw waveforms padded to the longest in the batch (+ attention mask where the model uses
    one) and character labels padded with IGNORE_INDEX. ``label_text`` spells a transcript the
    way the head's vocabulary does (its casing)."""

    def __init__(self, processor, label_text: Callable[[str], str] = ctc_text):
        self.processor = processor
        self.label_text = label_text

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        fe = self.processor.feature_extractor
        audio = [np.asarray(e["audio"], dtype=np.float32) for e in examples]
        batch = fe(
            audio,
            sampling_rate=schema.SAMPLE_RATE,
            padding=True,
            return_tensors="pt",
            return_attention_mask=bool(fe.return_attention_mask),
        )
        labels = self.processor.tokenizer([self.label_text(e["text"]) for e in examples]).input_ids
        out = {"input_values": batch["input_values"], "labels": pad_labels(labels)}
        if "attention_mask" in batch:
            out["attention_mask"] = batch["attention_mask"]
        return out
