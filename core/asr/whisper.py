"""Whisper as an ``ASRModel``: language and task tokens, a fixed 30-s window (so packing pays
off), token labels with a decoder limit, and Seq2SeqTrainer with generated predictions."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from transformers import Seq2SeqTrainer, WhisperForConditionalGeneration, WhisperProcessor

from core import schema
from core.asr.base import ASRModel
from core.asr.collators import WhisperCollator, whisper_label_ids, whisper_label_text
from core.asr.packed import plan_windows, split_segments, timestamped_segments

# Whisper's encoder input is always a 30-s window (3000 frames of 10 ms).
WHISPER_WINDOW_SECONDS = 30.0
# Packed decoding: clips fill 28 s of the window (timestamps near its end are the least reliable)
# and 1.5 s of silence separates them (measured on 120 demo prompts: with 1 s the decoder ran
# through the gaps far more often, WER 19.8% against 3.2%).
PACK_FILL_SECONDS = 28.0
PACK_GAP_SECONDS = 1.5
# Generated tokens allowed per second of audio (plus a fixed margin). Fast English speech is
# about 4 words, 6 tokens a second; a model that loops ("three three three ...") would otherwise
# generate up to the decoder's 448 positions on a half-second clip, which cost one FSDD decode
# 24 minutes instead of 4 and only adds insertions that are errors anyway.
MAX_TOKENS_PER_SECOND = 15
MAX_TOKENS_MARGIN = 10


class _CapIsIntended(logging.Filter):
    """transformers warns on every batch that max_new_tokens overrides the checkpoint's max_length;
    here that is the point (the cap above), so the warning is dropped and every other one kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Both `max_new_tokens`")


logging.getLogger("transformers.generation.utils").addFilter(_CapIsIntended())


class WhisperASR(ASRModel):
    kind = "whisper"
    packable = True
    max_input_seconds = WHISPER_WINDOW_SECONDS

    def __init__(self, model, processor, language: str | None = None, task: str | None = None):
        super().__init__(model, processor)
        gen = model.generation_config
        self.multilingual = bool(getattr(gen, "is_multilingual", False)) or (
            not hasattr(gen, "is_multilingual") and bool(getattr(gen, "lang_to_id", None))
        )
        if self.multilingual:
            # language/task live in the generation config (generate reads them; the deprecated
            # forced_decoder_ids would override nothing and confuse readers, so it is cleared).
            if language:
                gen.language = language
                gen.task = task or getattr(gen, "task", None) or "transcribe"
            gen.forced_decoder_ids = None
            model.config.forced_decoder_ids = None
            processor.tokenizer.set_prefix_tokens(
                language=getattr(gen, "language", None),
                task=getattr(gen, "task", None) or "transcribe",
                predict_timestamps=False,
            )
        else:
            # English-only (.en) checkpoints take no language or task token: generate rejects them
            # and the labels must start <|startoftranscript|><|notimestamps|> as in pretraining.
            if language and language.lower() not in ("en", "english"):
                raise ValueError(
                    f"this Whisper checkpoint is English-only and cannot be trained or decoded for language "
                    f"{language!r}; use a multilingual checkpoint (e.g. openai/whisper-small)"
                )
            processor.tokenizer.language = None
            processor.tokenizer.task = None
            processor.tokenizer.set_prefix_tokens(predict_timestamps=False)

    @classmethod
    def load(cls, path: str, language: str | None = None, task: str | None = None, dtype=None) -> WhisperASR:
        model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32)
        processor = WhisperProcessor.from_pretrained(path)
        return cls(model, processor, language=language, task=task)

    @property
    def decoder_start_token_id(self) -> int:
        return int(self.model.config.decoder_start_token_id)

    def _generate(self, audio: list[np.ndarray], num_beams: int, **kw) -> torch.Tensor:
        longest = max(len(a) for a in audio) / schema.SAMPLE_RATE
        if longest > WHISPER_WINDOW_SECONDS:
            raise ValueError(
                f"audio of {longest:.1f} s is longer than Whisper's {WHISPER_WINDOW_SECONDS:g}-s window; split it "
                "first (the prepare stage's max_duration drops such utterances)"
            )
        feats = self.processor.feature_extractor(
            audio, sampling_rate=schema.SAMPLE_RATE, return_tensors="pt", return_attention_mask=True
        )
        dtype = next(self.model.parameters()).dtype
        # The prompt (start, language, task, notimestamps) shares the decoder's positions.
        room = int(self.model.config.max_target_positions) - 4
        cap = math.ceil(longest * MAX_TOKENS_PER_SECOND) + MAX_TOKENS_MARGIN
        return self.model.generate(
            input_features=feats["input_features"].to(self.device, dtype),
            attention_mask=feats["attention_mask"].to(self.device),
            num_beams=num_beams,
            max_new_tokens=min(cap, room),
            **kw,
        )

    def _transcribe_batch(self, audio: list[np.ndarray], num_beams: int) -> list[str]:
        ids = self._generate(audio, num_beams)
        return [t.strip() for t in self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def _transcribe_packed(self, audio: list[np.ndarray], batch_size: int, num_beams: int) -> list[str]:
        rate = schema.SAMPLE_RATE
        windows = plan_windows([len(a) / rate for a in audio], PACK_FILL_SECONDS, PACK_GAP_SECONDS)
        gap = np.zeros(round(PACK_GAP_SECONDS * rate), dtype=np.float32)
        tok = self.processor.tokenizer
        timestamp_begin = tok.convert_tokens_to_ids("<|0.00|>")
        special = set(tok.all_special_ids)
        out = [""] * len(audio)
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            arrays = [np.concatenate([x for p in w for x in (gap, audio[p.index])][1:]) for w in batch]
            ids = self._generate(arrays, num_beams, return_timestamps=True)
            for placements, seq in zip(batch, ids, strict=True):
                segments = timestamped_segments(seq.tolist(), timestamp_begin, special, tok.decode)
                for p, text in zip(placements, split_segments(segments, placements), strict=True):
                    out[p.index] = text.strip()
        return out

    def collator(self):
        return WhisperCollator(self.processor, self.decoder_start_token_id)

    def trainer_base(self) -> type:
        return Seq2SeqTrainer

    def label_lengths(self, texts: Sequence[str]) -> np.ndarray:
        ids = whisper_label_ids(self.processor.tokenizer, list(texts), self.decoder_start_token_id)
        return np.array([len(s) for s in ids], dtype=np.int64)

    def label_overhead(self) -> int:
        """Tokens of a label that are not text (prefix + end-of-text): a packed window pays them once."""
        text_only = len(self.processor.tokenizer(whisper_label_text(""), add_special_tokens=False).input_ids)
        return int(self.label_lengths([""])[0]) - text_only

    def label_limit(self, targs) -> int:
        """Tokens a label may have: the decoder has max_target_positions positions and the shifted
        decoder input is as long as the label."""
        return min(int(targs.max_label_tokens), int(self.model.config.max_target_positions))

    def length_problems(self, durations, texts, targs) -> dict[str, np.ndarray]:
        problems = super().length_problems(durations, texts, targs)
        limit = self.label_limit(targs)
        problems[f"label_over_{limit}_tokens"] = self.label_lengths(texts) > limit
        return problems

    def configure_training_args(self, training_args, targs) -> None:
        if training_args.metric_for_best_model in ("wer", "cer") and not training_args.predict_with_generate:
            raise ValueError(
                "metric_for_best_model is WER/CER, which Whisper can only compute from generated text: "
                "set predict_with_generate: true (or metric_for_best_model: loss)"
            )

    def _freeze(self, targs) -> None:
        if targs.freeze_encoder:
            self.model.freeze_encoder()

    def decode_predictions(self, pred) -> tuple[list[str], list[str]]:
        tok = self.processor.tokenizer
        pred_ids = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        pred_ids = np.where(pred_ids < 0, pad, pred_ids)
        label_ids = np.where(pred.label_ids < 0, pad, pred.label_ids)
        hyps = [t.strip() for t in tok.batch_decode(pred_ids, skip_special_tokens=True)]
        refs = [t.strip() for t in tok.batch_decode(label_ids, skip_special_tokens=True)]
        return hyps, refs
