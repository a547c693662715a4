"""CTC encoders (Wav2Vec2, HuBERT, WavLM, ...) as an ``ASRModel``: a character vocabulary and
head built from the training text, frame-count length guards, and the plain Trainer."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForCTC,
    AutoProcessor,
    Trainer,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Processor,
)

from core import schema
from core.asr.base import ASRModel
from core.asr.collators import CTCCollator, ctc_text

logger = logging.getLogger(__name__)

CTC_PAD, CTC_UNK, CTC_DELIMITER = "[PAD]", "[UNK]", "|"


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
        model = AutoModelForCTC.from_pretrained(path, dtype=dtype or torch.float32)
        return cls(model, AutoProcessor.from_pretrained(path))

    @classmethod
    def load_with_new_vocab(cls, path: str, texts: Sequence[str]) -> CTCASR:
        """The checkpoint's encoder with a fresh head for the training text's characters
        (``ignore_mismatched_sizes``: a different vocabulary size replaces the old head)."""
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
