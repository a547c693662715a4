"""Where every stage writes under ``run.output_dir``: the one place these names are spelled.

Stages, the ablation and run_finetune.sh all read each other's outputs through this module; the
shell asks it on the command line::

    python -m core.paths --config configs/demo.yaml [--output_dir DIR] final_eval:target_test
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_OUTPUT_DIR = "exp/demo"
ZERO_SHOT_EVAL = "zero_shot"


@dataclass(frozen=True)
class ExperimentPaths:
    """The folders of one experiment; ``train_dir`` overrides where training writes (train.output_dir)."""

    root: Path
    train_dir: Path | None = None

    @classmethod
    def of(cls, output_dir: str | os.PathLike, train_dir: str | os.PathLike | None = None) -> ExperimentPaths:
        return cls(Path(output_dir), Path(train_dir) if train_dir else None)

    # prepare
    @property
    def data(self) -> Path:
        return self.root / "data"

    # generate
    @property
    def candidates(self) -> Path:
        return self.root / "candidates"

    @property
    def candidates_dataset(self) -> Path:
        return self.candidates / CANDIDATES_DATASET

    @property
    def real_augmented(self) -> Path:
        return self.candidates / REAL_AUGMENTED

    # filter
    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def filter(self) -> Path:
        return self.root / "filter"

    # train
    @property
    def train(self) -> Path:
        return self.train_dir or self.root / "train"

    # evaluate
    def eval(self, name: str) -> Path:
        return self.root / "eval" / name

    def final_eval(self, split: str) -> Path:
        """Where the train stage's final decode of ``split`` with the saved model goes."""
        return self.eval(final_eval_name(self.train, split))

    # ablation
    @property
    def ablation(self) -> Path:
        return self.root / "ablation"

    # run_finetune.sh's markers of finished stages
    @property
    def stages(self) -> Path:
        return self.root / ".stages"


# What the generate stage writes inside its folder: the candidates (read by the filter) and the
# perturbed copies of target_train (read by train as part of the real data, never filtered).
CANDIDATES_DATASET = "dataset"
REAL_AUGMENTED = "real_augmented"
# Transcripts prepare kept as text only (data/unused_texts.txt): generate speaks them.
UNUSED_TEXTS = "unused_texts.txt"
# What the filter stage writes inside its folder (read by train and the ablation).
ACCEPTED = "accepted"
SCORED = "scored"
FILTER_REPORT = "filter_report.json"


def final_eval_name(model_dir: str | os.PathLike, split: str) -> str:
    return f"{Path(model_dir).name}-{split}"


def default_eval_name(model: str, split: str) -> str:
    """An evaluation's folder name when none is given: the model's last path part and the split."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{Path(model.rstrip('/')).name}-{split}")


def _lookup(paths: ExperimentPaths, name: str) -> Path:
    key, _, arg = name.partition(":")
    if key == "eval" and arg:
        return paths.eval(arg)
    if key == "final_eval" and arg:
        return paths.final_eval(arg)
    if not arg and key in {
        "root",
        "data",
        "candidates",
        "candidates_dataset",
        "real_augmented",
        "embeddings",
        "filter",
        "train",
        "ablation",
        "stages",
    }:
        return getattr(paths, key)
    raise SystemExit(
        f"unknown path {name!r}: root, data, candidates, filter, train, ablation, stages, eval:NAME, final_eval:SPLIT"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the path of a stage output of an experiment.")
    parser.add_argument("--config", default=None, help="YAML config (run.output_dir, train.output_dir)")
    parser.add_argument("--output_dir", default=None, help="overrides run.output_dir")
    parser.add_argument(
        "name", help="root, data, candidates, filter, train, ablation, stages, eval:NAME, final_eval:SPLIT"
    )
    args = parser.parse_args(argv)
    # Plain YAML, not core.config: the stages validate the file; this answers the shell in a blink.
    cfg = (yaml.safe_load(Path(args.config).read_text()) or {}) if args.config else {}
    root = args.output_dir or (cfg.get("run") or {}).get("output_dir") or DEFAULT_OUTPUT_DIR
    print(_lookup(ExperimentPaths.of(root, (cfg.get("train") or {}).get("output_dir")), args.name))


if __name__ == "__main__":
    main()
