"""Arguments of the ablation stage (section `ablation`) and its arms."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Section, arg

# The candidate selection (train.use_candidates) of every trained arm. real+anti is in the default
# arms although it adds one training per seed (about a sixth more time): it is the control that
# says whether the ratio carries information at all, and without it a win over real+random could
# still come from the pool, not from the ratio's order.
ARM_CANDIDATES = {
    "real_only": "none",
    "real+all": "all",
    "real+random": "random",
    "real+anti": "anti",
    "real+accepted": "accepted",
    "real+weighted": "weighted",
}
ARMS = ("zero_shot", *ARM_CANDIDATES)
REFERENCE_ARM = "real+accepted"


@dataclass
class AblationArgs:
    arms: list[str] = arg(
        list(ARMS),
        "Arms to run (see recipe/ablation.py): zero_shot, real_only, real+all, real+random, real+anti, "
        "real+accepted, real+weighted.",
        choices=list(ARMS),
    )
    seeds: int = arg(
        5,
        "Seeds per arm (run.seed, run.seed+1, ...): each seed reruns the filter and trains every arm; zero_shot "
        "is decoded once. Seeds vary more than the gaps between arms, and the seed-level test needs several.",
        ge=1,
    )
    split: str = arg("target_test", "Split every arm is evaluated on.")
    base_model: str = arg(
        "", "The checkpoint of the zero_shot arm; empty: the train section's model_name_or_path."
    )
    mix_real: float = arg(
        0.5,
        "Share of training draws from the real data in every arm with candidates (the candidates get the rest): "
        "one value for all arms, so they differ only in which candidates fill the other share.",
        gt=0,  # at 1 the candidate arms would be real_only, at 0 they would draw no real data
        lt=1,
    )
    augment_real: str = arg(
        "auto",
        "Add generate's perturbed copies of target_train to the real part of every trained arm (train.augment_real): "
        "on, off, or auto (on when <output_dir>/candidates/real_augmented exists).",
        choices=["auto", "on", "off"],
    )
    extra_train_args: list[str] = arg(
        [], "Extra `--key value` arguments for every training run, e.g. `--max_steps 60`."
    )
    keep_models: bool = arg(
        False,
        "Keep each trained arm's model and checkpoints. Off: once an arm's test decode is written its weights and "
        "checkpoints are deleted (reports, config and hyps stay): 5 seeds x 6 arms of whisper-tiny are ~25 GB.",
    )
    bootstrap_samples: int = arg(
        2000, "Resamples of the hierarchical bootstrap (seeds, then utterances).", ge=1
    )


SECTION = Section("ablation", (AblationArgs,))
