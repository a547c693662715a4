"""The Hugging Face Hub: the final push of the trained model with the recipe's card, and the rule
that the token comes from the environment (HF_TOKEN or the stored login), never from a config."""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import HfApi

from core.config import ConfigError

logger = logging.getLogger(__name__)


def refuse_token_in_args(training_args) -> None:
    """A token in the arguments would be saved with every checkpoint and the resolved config."""
    if training_args.hub_token:
        raise ConfigError(
            "hub_token must not be set in a config or on the command line (it would be saved with every checkpoint "
            "and the resolved config); export HF_TOKEN or run `hf auth login` instead"
        )


def push_final(trainer, out_dir: Path) -> None:
    """Upload the final model with our card, after the Trainer's checkpoint pushes finish.

    Trainer.push_to_hub would overwrite README.md with its own card, so the final upload is ours;
    HfApi finds the token in HF_TOKEN or the stored login.
    """
    if trainer.push_in_progress is not None:
        trainer.push_in_progress.wait_until_done()
    HfApi().upload_folder(
        repo_id=trainer.hub_model_id,
        folder_path=str(out_dir),
        commit_message="End of training: final model and model card",
        ignore_patterns=["_*", "checkpoint-*", "last-checkpoint/*"],
    )
    logger.info("pushed %s to the Hub as %s", out_dir, trainer.hub_model_id)
