"""Stage `train`: fine-tune Whisper or a CTC model on real target speech plus filtered candidates.

    python -m recipe.train --config configs/demo.yaml
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m recipe.train --config configs/demo.yaml

Steps: 1. arguments; 2. the training mix (target_train + candidates [+ source], mixing ratios or
the filter's weights); 3. the model (the only Whisper/CTC branch is in recipe.models); 4. length
guards, counted and logged; 5. examples: packed windows or single utterances, sampling plan;
6. the Trainer; 7. training, resumed from the last checkpoint; 8. the final model; 9. final
evaluation (recipe.evaluate, WER/CER with CIs); 10. model card and Hub push.

Writes `<output_dir>/train/`: the model and processor, `checkpoint-*/` (each with the resolved
`config.yaml`), `runs/` (TensorBoard), `train_report.json`, `config.yaml` and `README.md` (the card);
final evaluations go to `<output_dir>/eval/<model>-<split>/`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import files, paths, schema
from core.config import ConfigError, RunArgs, save_resolved
from core.paths import ExperimentPaths
from recipe.packing import (
    WindowDataset,
    draw_order,
    join_transcripts,
    pack_windows,
    packing_summary,
    split_oversized,
)

logger = logging.getLogger(__name__)

PARTS = ("real", "candidates", "source")
# Canonical columns training reads (plus `generator`/`origin` for the card's data composition).
TRAIN_COLUMNS = ["id", "audio", "text", "duration", "origin", "generator"]


# ---------------------------------------------------------------------------------------------
# 2. The training mix
# ---------------------------------------------------------------------------------------------
@dataclass
class Part:
    """One source of training rows and each row's natural sampling mass (1, or the filter's weight)."""

    name: str
    rows: object  # datasets.Dataset, audio left as WAV bytes
    mass: np.ndarray


def _canonical(ds, where: str):
    missing = [c for c in TRAIN_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{where} lacks column(s) {missing}; it must follow data_prep/schema.py (rerun the stage that wrote it)"
        )
    ds = schema.without_audio_decoding(ds.select_columns(TRAIN_COLUMNS))
    target = schema.features()
    target["audio"] = ds.features["audio"]
    target = type(target)({c: target[c] for c in TRAIN_COLUMNS})
    if ds.features != target:  # e.g. duration written as float64: the parts must concatenate
        logger.info("%s: casting %s to the canonical schema", where, dict(ds.features))
        ds = ds.cast(target)
    return ds


def normalized_transcripts(rows, language: str, where: str):
    """``rows`` with every transcript in the scoring normalizer's style (see ``normalize_labels``)."""
    from recipe.metrics.normalize import get_normalizer

    normalize = get_normalizer(language)
    old = rows["text"]
    new = [normalize(t) for t in old]
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    if changed:
        logger.info(
            "normalize_labels: %s: %d of %d transcripts rewritten, e.g. %r -> %r",
            where,
            len(changed),
            len(old),
            *changed[0],
        )
    return rows.remove_columns("text").add_column("text", new).select_columns(TRAIN_COLUMNS)


def select_candidates(scored, mode: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the scored candidates for an ablation arm, and their sampling mass.

    ``all``: every candidate; ``random``: a seeded uniform subset as large as the accepted set
    (the control that separates "more data" from "the filter's choice"); ``weighted``: every
    candidate with its ``weight`` as mass.
    """
    n = len(scored)
    if mode == "all":
        return np.arange(n), np.ones(n)
    if mode == "random":
        k = int(np.sum(scored["accepted"]))
        return np.sort(rng.choice(n, size=k, replace=False)), np.ones(k)
    if mode == "weighted":
        if "weight" not in scored.column_names:
            raise ValueError(
                "the scored candidates have no `weight` column: rerun the filter stage (it writes `weight` in every mode)"
            )
        w = np.asarray(scored["weight"], dtype=np.float64)
        if not np.isfinite(w).all() or np.any(w < 0):
            raise ValueError("the scored candidates' `weight` column has negative or non-finite values")
        return np.arange(n), w
    raise ValueError(f"unknown candidate selection {mode!r}")


def load_parts(run: RunArgs, targs, rng: np.random.Generator) -> list[Part]:
    """The real target split, the selected candidates and (optionally) the source split."""
    data_dir = Path(targs.data_dir or ExperimentPaths.of(run.output_dir).data)
    real = _canonical(schema.load_split(data_dir, targs.train_split), f"{data_dir}[{targs.train_split}]")
    parts = [Part("real", real, np.ones(len(real)))]
    if targs.use_candidates != "none":
        filter_dir = Path(targs.filter_dir or ExperimentPaths.of(run.output_dir).filter)
        if targs.use_candidates == "accepted":
            path = filter_dir / paths.ACCEPTED
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} does not exist: run the filter stage first, or set use_candidates: none"
                )
            rows = _canonical(schema.load_split(path), str(path))
            parts.append(Part("candidates", rows, np.ones(len(rows))))
        else:
            path = filter_dir / paths.SCORED
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} does not exist: run the filter stage first, or set use_candidates: none"
                )
            scored = schema.load_split(path)
            idx, mass = select_candidates(scored, targs.use_candidates, rng)
            parts.append(Part("candidates", _canonical(scored, str(path)).select(idx), mass))
    if targs.use_source:
        source = _canonical(schema.load_split(data_dir, "source"), f"{data_dir}[source]")
        parts.append(Part("source", source, np.ones(len(source))))
    return parts


def mix_weights(masses: dict[str, np.ndarray], ratios: dict[str, float]) -> np.ndarray | None:
    """Per-row sampling weights over the parts concatenated in ``masses``' order.

    With every ratio 0 each row keeps its natural mass (None when all masses are 1: plain
    shuffling). Otherwise part k gets ``ratios[k] / sum(ratios)`` of the total mass, spread over
    its rows in proportion to their natural mass; a part with ratio 0 is not drawn from. The
    total mass, i.e. the number of draws per pass over the data, stays the natural one.
    """
    unknown = [k for k, r in ratios.items() if r and k not in masses]
    if unknown:
        raise ConfigError(
            f"mixing ratio set for {unknown}, which are not in the training mix (parts: {list(masses)})"
        )
    if any(r < 0 for r in ratios.values()):
        raise ConfigError(f"mixing ratios must be >= 0, got {ratios}")
    total = float(sum(m.sum() for m in masses.values()))
    if not any(ratios.get(k, 0.0) for k in masses):
        if all(np.all(m == 1.0) for m in masses.values()):
            return None
        return np.concatenate(list(masses.values()))
    norm = sum(ratios.get(k, 0.0) for k in masses)
    out = []
    for k, m in masses.items():
        share = ratios.get(k, 0.0) / norm
        out.append(m / m.sum() * share * total if m.sum() > 0 else m)
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# 4. Length guards
# ---------------------------------------------------------------------------------------------
def apply_guards(asr, rows, targs, what: str) -> tuple[np.ndarray, dict[str, int]]:
    """Indices of rows the model can train on, and the dropped counts by reason (logged)."""
    durations = np.asarray(rows["duration"], dtype=np.float64)
    texts = rows["text"]
    problems = asr.length_problems(durations, texts, targs)
    bad = np.zeros(len(rows), dtype=bool)
    dropped: dict[str, int] = {}
    for reason, mask in problems.items():
        new = mask & ~bad  # count each row under its first reason only
        dropped[reason] = int(new.sum())
        bad |= mask
    for reason, n in dropped.items():
        if n:
            logger.warning(
                "%s: dropped %d of %d utterances (%.1f%%): %s",
                what,
                n,
                len(rows),
                100 * n / len(rows),
                reason,
            )
    logger.info("%s: kept %d of %d utterances", what, int((~bad).sum()), len(rows))
    return np.flatnonzero(~bad), dropped


# ---------------------------------------------------------------------------------------------
# 5. Examples
# ---------------------------------------------------------------------------------------------
def use_packing(asr, targs, durations: np.ndarray) -> bool:
    if targs.packing == "off":
        return False
    if not asr.packable:
        if targs.packing == "on":
            raise ConfigError(
                f"packing: on needs a fixed input window (Whisper); a {asr.kind} model pads batches to the longest utterance: set packing: off"
            )
        return False
    if targs.packing == "on":
        return True
    # auto: worth it when at least two utterances fit a window on average
    return bool(len(durations)) and float(np.median(durations)) < asr.max_input_seconds / 2


def build_train_examples(
    asr, pool, weights: np.ndarray | None, targs, seed: int
) -> tuple[WindowDataset, dict]:
    """Windows of pool rows: packed (weights realized by a seeded draw of the rows first) or one
    utterance each (weights left to the trainer's weighted sampler, fresh draws every epoch)."""
    durations = np.asarray(pool["duration"], dtype=np.float64)
    if not use_packing(asr, targs, durations):
        return WindowDataset(pool, [[i] for i in range(len(pool))], weights=weights), {
            "packing": False,
            "utterances": len(pool),
        }
    if not 0.0 <= targs.unpacked_share <= 1.0:
        raise ConfigError(f"unpacked_share must be within [0, 1], got {targs.unpacked_share}")
    texts = pool["text"]
    limit = asr.label_limit(targs)
    rng = np.random.default_rng(seed)
    order = draw_order(weights, len(pool), rng)
    # Each utterance's text tokens; the prefix/end tokens are paid once per window.
    overhead = asr.label_overhead()
    tokens = asr.label_lengths(texts) - overhead
    # The first draws of the seeded order stay alone: windows shaped like evaluation's.
    n_single = int(round(targs.unpacked_share * len(order)))
    windows = pack_windows(
        order[n_single:], durations, tokens, targs.pack_max_seconds, targs.pack_gap_seconds, limit - overhead
    )
    joined = [join_transcripts([texts[i] for i in w]) for w in windows]
    windows, n_split = split_oversized(windows, asr.label_lengths(joined) > limit)
    if n_split:
        logger.info("packing: split %d windows whose joined label exceeded %d tokens", n_split, limit)
    windows = [[int(i)] for i in order[:n_single]] + windows
    summary = packing_summary(windows, durations, targs.pack_gap_seconds, asr.max_input_seconds)
    logger.info(
        "packing: %d utterance draws into %d windows (%d left alone; %.2f per window, %.0f%% of the encoder's window is speech)",
        summary["utterances"],
        summary["windows"],
        n_single,
        summary["utterances_per_window"],
        100 * summary["speech_fill"],
    )
    summary["unpacked_utterances"] = n_single
    return WindowDataset(pool, windows, gap_seconds=targs.pack_gap_seconds), {"packing": True, **summary}


# ---------------------------------------------------------------------------------------------
# 6. The Trainer
# ---------------------------------------------------------------------------------------------
def weighted_sampler(weights: np.ndarray, seed: int):
    """Draws with replacement in proportion to ``weights``, ``round(sum(weights))`` per epoch (a
    row's weight is its expected number of visits), fresh draws every epoch. The same seed in
    every process: accelerate shards one shared sequence of batches across them."""
    from torch.utils.data import WeightedRandomSampler

    n = max(int(round(float(np.sum(weights)))), 1)
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        torch.as_tensor(np.asarray(weights), dtype=torch.double), n, replacement=True, generator=generator
    )


def recipe_trainer(base: type) -> type:
    """``base`` (Trainer or Seq2SeqTrainer) with the recipe's samplers: weighted draws when the
    examples carry weights, length grouping from the examples' known lengths (never by decoding
    every example to measure it)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class RecipeTrainer(base):
        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            weights = getattr(ds, "weights", None)
            if weights is not None:
                return weighted_sampler(weights, self.args.seed)
            if (
                self.args.train_sampling_strategy == "group_by_length"
                and getattr(ds, "lengths", None) is not None
            ):
                return LengthGroupedSampler(
                    self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=ds.lengths
                )
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            # Evaluation order does not matter; transformers would group it by length by decoding it.
            if self.args.world_size <= 1:
                return torch.utils.data.SequentialSampler(eval_dataset)
            return None  # accelerate shards it in order

    RecipeTrainer.__name__ = f"Recipe{base.__name__}"
    return RecipeTrainer


def make_compute_metrics(asr, language: str):
    from recipe.metrics import load_metric
    from recipe.metrics.normalize import get_normalizer

    normalize = get_normalizer(language)
    wer, cer = load_metric("wer"), load_metric("cer")

    def compute_metrics(pred) -> dict[str, float]:
        hyps, refs = asr.decode_predictions(pred)
        h, r = [normalize(x) for x in hyps], [normalize(x) for x in refs]
        return {
            "wer": wer.compute(predictions=h, references=r)["wer"],
            "cer": cer.compute(predictions=h, references=r)["cer"],
        }

    return compute_metrics


def save_config_callback(write_config):
    from transformers import TrainerCallback

    class SaveConfig(TrainerCallback):
        """The resolved config beside every checkpoint (the Trainer already saves the processor)."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_config(Path(args.output_dir) / f"checkpoint-{state.global_step}" / "config.yaml")

    return SaveConfig()


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------
def composition(parts: list[Part], kept: dict[str, np.ndarray]) -> dict:
    """Utterances and hours per part after the guards, and candidates by generator engine."""
    out: dict = {}
    for p in parts:
        rows = p.rows.select(kept[p.name])
        entry = {"utterances": len(rows), "hours": round(float(np.sum(rows["duration"])) / 3600, 4)}
        if p.name == "candidates":
            engines = Counter()
            for origin, g in zip(rows["origin"], rows["generator"], strict=True):
                try:
                    engines[schema.generator_label(origin, json.loads(g or "{}"))] += 1
                except json.JSONDecodeError:
                    engines["unknown"] += 1
            entry["by_generator"] = dict(sorted(engines.items()))
            entry["by_origin"] = dict(sorted(Counter(rows["origin"]).items()))
        out[p.name] = entry
    return out


def resolve_output(run: RunArgs, training_args) -> None:
    """The train section's output_dir/seed follow `run` unless the section sets output_dir."""
    if not training_args.output_dir:
        training_args.output_dir = str(ExperimentPaths.of(run.output_dir).train)
    training_args.seed = run.seed
    # Without this, PEFT-wrapped models (whose forward takes **kwargs) would not be given labels at eval.
    training_args.label_names = ["labels"]
    if training_args.hub_token:
        raise ConfigError(
            "hub_token must not be set in a config or on the command line (it would be saved with every checkpoint "
            "and the resolved config); export HF_TOKEN or run `hf auth login` instead"
        )


def train(run: RunArgs, targs, training_args, argv: list[str]) -> dict:
    from transformers.trainer_utils import get_last_checkpoint

    t0 = time.time()
    out_dir = Path(training_args.output_dir)
    rng = np.random.default_rng(run.seed)

    # 2. the training mix
    parts = load_parts(run, targs, rng)
    if targs.normalize_labels:
        parts = [Part(p.name, normalized_transcripts(p.rows, targs.language, p.name), p.mass) for p in parts]
    logger.info("training mix: %s", ", ".join(f"{p.name} {len(p.rows)}" for p in parts))

    # 3. the model
    from recipe.models import load_for_training

    asr = load_for_training(targs, [t for p in parts for t in p.rows["text"]])
    asr.configure_training_args(training_args, targs)

    # 4. length guards, per part, before anything is trained
    kept, dropped = {}, {}
    for p in parts:
        kept[p.name], dropped[p.name] = apply_guards(asr, p.rows, targs, p.name)
    from datasets import concatenate_datasets

    pool = concatenate_datasets([p.rows.select(kept[p.name]) for p in parts])
    masses = {p.name: p.mass[kept[p.name]] for p in parts}
    ratios = {"real": targs.mix_real, "candidates": targs.mix_candidates, "source": targs.mix_source}
    weights = mix_weights(masses, ratios)
    if len(pool) == 0:
        raise ValueError("no training utterance is left after the length guards; see the warnings above")

    # 5. examples
    train_ds, packing = build_train_examples(asr, pool, weights, targs, run.seed)
    eval_ds, eval_dropped = None, {}
    if targs.eval_split:
        data_dir = Path(targs.data_dir or ExperimentPaths.of(run.output_dir).data)
        eval_rows = _canonical(
            schema.load_split(data_dir, targs.eval_split), f"{data_dir}[{targs.eval_split}]"
        )
        idx, eval_dropped = apply_guards(asr, eval_rows, targs, f"eval {targs.eval_split}")
        if targs.eval_max_utterances and len(idx) > targs.eval_max_utterances:
            idx = np.sort(
                np.random.default_rng(run.seed).choice(idx, targs.eval_max_utterances, replace=False)
            )
        eval_ds = WindowDataset(eval_rows, [[int(i)] for i in idx])
    else:
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False

    # 6. the trainer
    def write_config(path: Path) -> None:
        save_resolved(path, "train", run, targs, training_args)

    trainer = recipe_trainer(asr.trainer_base())(
        model=asr.model,
        args=training_args,
        data_collator=asr.collator(),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=asr.processor,
        compute_metrics=make_compute_metrics(asr, targs.language) if eval_ds is not None else None,
        preprocess_logits_for_metrics=asr.preprocess_logits_for_metrics,
        callbacks=[save_config_callback(write_config)],
    )
    if trainer.is_world_process_zero():
        write_config(out_dir / "config.yaml")

    # 7. train, resuming from the last checkpoint
    resume = training_args.resume_from_checkpoint
    if resume is None and targs.resume and out_dir.is_dir():
        resume = get_last_checkpoint(str(out_dir))
        # Resume only a run of this very config: a checkpoint of another config (more steps, another
        # mix) would silently hand back the old model. Each checkpoint holds its resolved config.
        saved = Path(resume) / "config.yaml" if resume else None
        with tempfile.TemporaryDirectory() as tmp:  # every rank renders the config itself: no race on out_dir
            write_config(Path(tmp) / "config.yaml")
            current = (Path(tmp) / "config.yaml").read_text()
        if saved is not None and (not saved.is_file() or saved.read_text() != current):
            logger.warning("%s was trained with another config: starting over instead of resuming", resume)
            for old in out_dir.glob("checkpoint-*"):
                shutil.rmtree(old)
            resume = None
    if resume:
        logger.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", result.metrics)

    # 8. the final (best) model
    if targs.lora:
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            asr.model = trainer.accelerator.unwrap_model(trainer.model)
            asr.save(out_dir)
    else:
        trainer.save_model(str(out_dir))
    trainer.save_state()
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return {}

    report = {
        "base_model": targs.model_name_or_path,
        "kind": asr.kind,
        "world_size": training_args.world_size,
        "global_step": trainer.state.global_step,
        "resumed_from": str(resume) if resume else None,
        "train_metrics": result.metrics,
        "best_metric": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "composition": composition(parts, kept),
        "dropped": dropped,
        "eval_dropped": eval_dropped,
        "sampling": "weighted" if weights is not None else "uniform",
        "examples": packing,
        "train_seconds": round(time.time() - t0, 1),
    }

    # 9. final evaluation with the saved model, per utterance, with CIs
    evals = final_evaluation(run, targs, training_args, out_dir)
    report["final_eval"] = {k: v["overall"] for k, v in evals.items()}
    files.write_json(report, out_dir / "train_report.json")

    # 10. the model card, then the final push
    from recipe.card import filter_summary, reproduce_command, write_card

    write_card(
        out_dir,
        base_model=targs.model_name_or_path,
        language=targs.language,
        evals=evals,
        report=report,
        filter_report=filter_summary(
            Path(targs.filter_dir or ExperimentPaths.of(run.output_dir).filter) / paths.FILTER_REPORT
        ),
        train_args=targs,
        training_args=training_args,
        command=reproduce_command(argv, training_args.world_size),
        hub_model_id=trainer.hub_model_id if training_args.push_to_hub else None,
    )
    if training_args.push_to_hub:
        push_final(trainer, out_dir)
    return report


def final_evaluation(run: RunArgs, targs, training_args, out_dir: Path) -> dict[str, dict]:
    """recipe.evaluate on each of ``final_eval_splits`` with the saved model."""
    from recipe.evaluate import evaluate
    from recipe.evaluate_args import EvaluateArgs

    results = {}
    for split in targs.final_eval_splits:
        args = EvaluateArgs(
            model=str(out_dir),
            dataset=targs.data_dir or str(ExperimentPaths.of(run.output_dir).data),
            split=split,
            eval_name=paths.final_eval_name(out_dir, split),
            batch_size=training_args.per_device_eval_batch_size,
            language=targs.language,
            bootstrap_samples=targs.bootstrap_samples,
        )
        results[split] = evaluate(run, args)
    return results


def push_final(trainer, out_dir: Path) -> None:
    """Upload the final model with our card, after the Trainer's checkpoint pushes finish.

    Trainer.push_to_hub would overwrite README.md with its own card, so the final upload is ours;
    the token comes from HF_TOKEN or the stored login, never from the config.
    """
    from huggingface_hub import HfApi

    if trainer.push_in_progress is not None:
        trainer.push_in_progress.wait_until_done()
    HfApi().upload_folder(
        repo_id=trainer.hub_model_id,
        folder_path=str(out_dir),
        commit_message="End of training: final model and model card",
        ignore_patterns=["_*", "checkpoint-*", "last-checkpoint/*"],
    )
    logger.info("pushed %s to the Hub as %s", out_dir, trainer.hub_model_id)


def main(argv: list[str] | None = None) -> dict:
    from transformers.utils import logging as hf_logging

    from core.config import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    run, targs, training_args = parse_args("train", argv, description=__doc__)
    resolve_output(run, training_args)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        level=logging.INFO if rank0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    hf_logging.set_verbosity(training_args.get_process_log_level())
    return train(run, targs, training_args, argv)


if __name__ == "__main__":
    main()
