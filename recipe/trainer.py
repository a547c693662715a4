"""The recipe's transformers Trainer: its samplers, its WER/CER metrics, the resolved config saved
with every checkpoint, which checkpoint a rerun resumes from, and saving the final model."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import SequentialSampler, WeightedRandomSampler
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from core.asr.normalize import get_normalizer
from core.seeding import derive_seed
from recipe.metrics import load_metric
from recipe.packing import EpochPacker, EpochWindowSampler

logger = logging.getLogger(__name__)


def weighted_sampler(weights: np.ndarray, seed: int) -> WeightedRandomSampler:
    """Draws with replacement in proportion to ``weights``, ``round(sum(weights))`` per epoch (a
    row's weight is its expected number of visits), fresh draws every epoch. The same seed in
    every process: accelerate shards one shared sequence of batches across them."""
    n = max(int(round(float(np.sum(weights)))), 1)
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        torch.as_tensor(np.asarray(weights), dtype=torch.double), n, replacement=True, generator=generator
    )


def recipe_trainer(base: type) -> type:
    """``base`` (Trainer or Seq2SeqTrainer) with the recipe's samplers: windows packed afresh every
    epoch when given a ``packer`` (recipe.packing.EpochPacker), weighted draws when the examples
    carry weights, length grouping from the examples' known lengths (never by decoding every
    example to measure it)."""

    class RecipeTrainer(base):
        def __init__(self, *args, packer: EpochPacker | None = None, **kwargs):
            self.packer = packer
            super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            if self.packer is not None:
                return EpochWindowSampler(self.packer)
            weights = getattr(ds, "weights", None)
            if weights is not None:
                return weighted_sampler(weights, derive_seed(self.args.seed, "train", "sampler"))
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
                return SequentialSampler(eval_dataset)
            return None  # accelerate shards it in order

    RecipeTrainer.__name__ = f"Recipe{base.__name__}"
    return RecipeTrainer


def make_compute_metrics(asr, language: str):
    """WER and CER of the Trainer's evaluation predictions, on normalized text as in the final evaluation."""
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


def save_config_callback(write_config: Callable[[Path], None]) -> TrainerCallback:
    class SaveConfig(TrainerCallback):
        """The resolved config beside every checkpoint (the Trainer already saves the processor)."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_config(Path(args.output_dir) / f"checkpoint-{state.global_step}" / "config.yaml")

    return SaveConfig()


def resume_checkpoint(
    training_args, targs, out_dir: Path, write_config: Callable[[Path], None]
) -> str | None:
    """The checkpoint to resume from: the one asked for, else with ``resume`` the last one in
    ``out_dir`` if it was trained with this very config; None: start from the base model."""
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
    return resume


def save_final_model(trainer, asr, targs, out_dir: Path) -> None:
    """The final (best) model and the trainer state in ``out_dir``; LoRA adapters merged into a
    plain transformers model."""
    if targs.lora:
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            asr.model = trainer.accelerator.unwrap_model(trainer.model)
            asr.save(out_dir)
    else:
        trainer.save_model(str(out_dir))
    trainer.save_state()
    trainer.accelerator.wait_for_everyone()
