"""Stage `train`: fine-tune Whisper or a CTC model on real target speech plus filtered candidates.

    python -m recipe.train --config configs/demo.yaml
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m recipe.train --config configs/demo.yaml

Steps: 1. arguments; 2. the training mix (target_train + candidates [+ source], recipe.data);
3. the model (the only Whisper/CTC branch is core.asr); 4. length guards, counted and
logged, and the sampling weights of the mixing shares; 5. examples: windows packed afresh every
epoch, or single utterances (recipe.packing); 6. the Trainer (recipe.trainer); 7. training, resumed from the last
checkpoint; 8. the final model; 9. final evaluation (recipe.evaluate, WER/CER with CIs);
10. model card (recipe.card) and Hub push (recipe.hub).

Writes `<output_dir>/train/`: the model and processor, `checkpoint-*/` (each with the resolved
`config.yaml`), `runs/` (TensorBoard), `train_report.json`, `config.yaml` and `README.md` (the card);
final evaluations go to `<output_dir>/eval/<model>-<split>/`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

from core import files
from core.asr import load_for_training
from core.config import LOG_FORMAT, RunArgs, parse_cli, save_resolved
from core.locks import output_lock
from core.paths import ExperimentPaths
from core.seeding import derive_seed, stream_rng
from recipe.card import write_training_card
from recipe.data import composition, eval_examples, filter_dir, load_parts, training_pool
from recipe.evaluate import final_evaluation
from recipe.hub import push_final, refuse_token_in_args
from recipe.packing import build_train_examples
from recipe.trainer import (
    make_compute_metrics,
    recipe_trainer,
    resume_checkpoint,
    save_config_callback,
    save_final_model,
)

logger = logging.getLogger(__name__)


def resolve_output(run: RunArgs, training_args) -> None:
    """The train section's output_dir/seed follow `run` unless the section sets output_dir."""
    if not training_args.output_dir:
        training_args.output_dir = str(ExperimentPaths.of(run.output_dir).train)
    training_args.seed = run.seed
    # Without this, PEFT-wrapped models (whose forward takes **kwargs) would not be given labels at eval.
    training_args.label_names = ["labels"]
    refuse_token_in_args(training_args)


def train(run: RunArgs, targs, training_args, argv: list[str]) -> dict:
    """Steps 2-10 with parsed arguments; returns the training report ({} on other ranks than 0)."""
    t0 = time.time()
    out_dir = Path(training_args.output_dir)

    # 2. the training mix
    parts = load_parts(run, targs, stream_rng(run.seed, "train", "candidates"))
    logger.info("training mix: %s", ", ".join(f"{p.name} {len(p.rows)}" for p in parts))

    # 3. the model
    asr = load_for_training(targs, [t for p in parts for t in p.rows["text"]])
    asr.configure_training_args(training_args, targs)

    # 4. length guards, per part, before anything is trained
    pool = training_pool(asr, parts, targs)

    # 5. examples
    train_ds, packing, packer = build_train_examples(
        asr, pool.rows, pool.weights, targs, derive_seed(run.seed, "train", "windows")
    )
    eval_ds, eval_dropped = None, {}
    if targs.eval_split:
        eval_ds, eval_dropped = eval_examples(asr, run, targs)
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
        packer=packer,
    )
    if trainer.is_world_process_zero():
        write_config(out_dir / "config.yaml")

    # 7. train, resuming from the last checkpoint
    resume = resume_checkpoint(training_args, targs, out_dir, write_config)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", result.metrics)

    # 8. the final (best) model
    save_final_model(trainer, asr, targs, out_dir)
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
        "composition": composition(parts, pool.kept),
        "dropped": pool.dropped,
        "eval_dropped": eval_dropped,
        "sampling": "weighted" if pool.weights is not None else "uniform",
        "examples": packing,
        "train_seconds": round(time.time() - t0, 1),
    }

    # 9. final evaluation with the saved model, per utterance, with CIs
    evals = final_evaluation(run, targs, out_dir, training_args.per_device_eval_batch_size)
    report["final_eval"] = {k: v["overall"] for k, v in evals.items()}
    files.write_json(report, out_dir / "train_report.json")

    # 10. the model card, then the final push
    write_training_card(
        out_dir,
        targs=targs,
        training_args=training_args,
        report=report,
        evals=evals,
        filter_dir=filter_dir(run, targs),
        argv=argv,
        hub_model_id=trainer.hub_model_id if training_args.push_to_hub else None,
    )
    if training_args.push_to_hub:
        push_final(trainer, out_dir)
    return report


def main(argv: list[str] | None = None) -> dict:
    # 1. arguments (YAML section `train` + command line), logging on rank 0
    argv = list(sys.argv[1:] if argv is None else argv)
    run, targs, training_args = parse_cli("train", argv, description=__doc__)
    resolve_output(run, training_args)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        level=logging.INFO if rank0 else logging.WARNING,
        format=LOG_FORMAT,
        force=True,
    )
    hf_logging.set_verbosity(training_args.get_process_log_level())
    with train_lock(Path(training_args.output_dir)):
        return train(run, targs, training_args, argv)


def train_lock(out_dir: Path) -> contextlib.AbstractContextManager:
    """A second training into ``out_dir`` waits for the first, then resumes from its checkpoints.

    Under a launcher every rank trains into the same folder, so each rank locks its own file: the
    ranks of a second launch wait for the same ranks of the first, never for their own rank 0
    (that would deadlock them in their first collective).
    """
    rank = int(os.environ.get("RANK", "0"))
    target = out_dir if rank == 0 else out_dir.with_name(f"{out_dir.name}.rank{rank}")
    return output_lock(target, "train" if rank == 0 else f"train rank {rank}")


if __name__ == "__main__":
    main()
