"""Arguments of the ablation stage (section `ablation`)."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Section, arg


@dataclass
class AblationArgs:
    arms: list[str] = arg(
        ["zero_shot", "real_only", "real+all", "real+random", "real+accepted", "real+weighted"],
        "Arms to run (see recipe/ablation.py): zero_shot, real_only, real+all, real+random, real+accepted, real+weighted.",
    )
    seeds: int = arg(3, "Training seeds per arm (run.seed, run.seed+1, ...); zero_shot is decoded once.")
    split: str = arg("target_test", "Split every arm is evaluated on.")
    base_model: str = arg(
        "", "The checkpoint of the zero_shot arm; empty: the train section's model_name_or_path."
    )
    extra_train_args: list[str] = arg(
        [], "Extra `--key value` arguments for every training run, e.g. `--max_steps 60`."
    )
    bootstrap_samples: int = arg(2000, "Bootstrap resamples for the CIs and paired p-values.")


SECTION = Section("ablation", (AblationArgs,))
