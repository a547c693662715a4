"""Stage `ablation`: does the filter help? The same training, arm by arm, seed by seed.

    python -m recipe.ablation --config configs/demo.yaml --seeds 5

Arms (every trained arm uses the `train` section unchanged except the candidate selection):
  zero_shot      the base checkpoint, no training
  real_only      target_train only
  real+all       target_train + every candidate
  real+random    target_train + a seeded random subset of candidates as large as the accepted set:
                 the control that separates the filter's choice from simply having less data
  real+anti      target_train + the candidates with the lowest ratios, as many as accepted (per text
                 with filter.group_by: text): if it does as well as real+accepted, the ratio
                 carries no useful information
  real+accepted  target_train + the filter's accepted candidates
  real+weighted  target_train + every candidate, drawn in proportion to its importance weight

What may differ between arms is the candidates, nothing else: every arm with candidates draws
`mix_real` of its training examples from the real data (real_only draws only real data), every
trained arm gets the same real augmentation (`augment_real`: generate's perturbed copies of
target_train), and the filter is rerun for every seed, its output under the ablation folder (its
cross-fitting folds and acceptance draws depend on the seed, so one fixed accepted set against a
random subset redrawn per seed would compare a constant with a variable). Arms that would train
on the same data (with filter mode `weights` every candidate is accepted: real+accepted and
real+random and real+anti become real+all) are refused.

Reads `<output_dir>/data` and `<output_dir>/candidates`; writes `<output_dir>/ablation/`:
`filter/seed<S>/` (the filter's run for seed S), one folder per arm and seed (model, train report,
hyps), `ablation.json`, `ablation.md` and `ablation.png` (statistics: recipe.ablation_report). A
run finished with the same command is reused on rerun.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from core import files, paths
from core.config import LOG_FORMAT, ConfigError, load_yaml, parse_cli
from core.locks import output_lock
from core.paths import ExperimentPaths
from recipe.ablation_args import ARM_CANDIDATES, REFERENCE_ARM
from recipe.ablation_report import plot, summarize, to_markdown
from recipe.evaluate import read_hyps
from recipe.train_args import TrainArgs

log = logging.getLogger(__name__)

# The arms that train on every candidate, uniformly, once the filter accepts all of them.
SAME_WHEN_ALL_ACCEPTED = ("real+all", "real+random", "real+accepted", "real+anti")
# Beside each run: the command that made it (without the interpreter), so a rerun reuses only
# the runs of the same command.
COMMAND_RECORD = "ablation_command.json"


def _run(cmd: list[str]) -> None:
    log.info("running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def _content(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "absent"


def _run_once(cmd: list[str], out: Path, result: Path, what: str, inputs: list[Path]) -> None:
    """Run ``cmd`` (writing into ``out``) unless ``result`` exists from the very same command on
    the very same ``inputs`` (files whose content the run depends on: the config, the filter's
    report; the command names them by path, and an edited config keeps its path).

    Under the lock of ``out``: two ablations started together (say on other seeds) share runs, and
    the second waits for a run the first is making, then reuses it instead of training it again.
    """
    with output_lock(out, f"ablation run {what}"):
        record_path = out / COMMAND_RECORD
        record = {"command": cmd[1:], "inputs": {str(p): _content(p) for p in inputs}}
        if result.exists() and record_path.is_file() and files.read_json(record_path) == record:
            log.info("%s: done, reusing %s", what, result)
            return
        _run(cmd)
        files.write_json(record, record_path)


def _config(cfg: str | None) -> list[str]:
    return ["--config", cfg] if cfg else []


def run_seed_filter(seed: int, cfg: str | None, exp: ExperimentPaths) -> Path:
    """The filter stage for ``seed`` on the experiment's data and candidates; returns its folder."""
    out = exp.ablation / "filter" / f"seed{seed}"
    filter_dir = ExperimentPaths.of(out).filter
    cmd = [sys.executable, "-m", "data_prep.filter", *_config(cfg), "--output_dir", str(out)]
    cmd += ["--seed", str(seed), "--data_dir", str(exp.data), "--candidates_dir", str(exp.candidates_dataset)]
    # Embeddings do not depend on the seed: every run reads the experiment's cache.
    cmd += ["--embeddings_dir", str(exp.embeddings)]
    inputs = [Path(cfg)] if cfg else []
    inputs += [exp.data / "target_train" / "state.json", exp.candidates / "report.json"]
    _run_once(cmd, out, filter_dir / paths.FILTER_REPORT, f"filter seed {seed}", inputs)
    return filter_dir


def refuse_duplicate_arms(arms: list[str], seed: int, report: dict) -> None:
    """Raise when two arms would train on the same data because the filter accepted everything."""
    if report["n_accepted"] < report["n_candidates"]:
        return
    same = [a for a in SAME_WHEN_ALL_ACCEPTED if a in arms]
    if len(same) < 2:
        return
    why = (
        "filter mode: weights keeps every candidate"
        if report.get("mode") == "weights"
        else f"the filter accepted all {report['n_candidates']} candidates for seed {seed}"
    )
    keep = [a for a in arms if a not in same or a == REFERENCE_ARM]
    raise ConfigError(
        f"arms {same} would train on the same data: {why}, so real+accepted is real+all, and real+random (a "
        f"random subset as large as the accepted set) and real+anti (the lowest ratios, as many) are real+all "
        f"too. Keep one of them in ablation.arms "
        f"(e.g. --arms {' '.join(keep)}; in weights mode real+weighted is the filter's arm), or set "
        f"filter.mode: reject (filter.policy sets how many are accepted)."
    )


def arm_dir(exp: ExperimentPaths, arm: str, seed: int) -> Path:
    return exp.ablation / arm.replace("+", "_") / ("base" if arm == "zero_shot" else f"seed{seed}")


def train_overrides(
    arm: str, args, exp: ExperimentPaths, filter_dir: Path | None, augment: bool
) -> list[str]:
    """The train stage's arguments for ``arm``: the candidates differ, the real share and the real
    augmentation are the same in every arm."""
    selection = ARM_CANDIDATES[arm]
    out = ["--data_dir", str(exp.data), "--use_candidates", selection, "--mix_real", f"{args.mix_real:.10g}"]
    # real_only has no candidate part to give a share to (mix_weights refuses a share for it).
    out += ["--mix_candidates", "0" if selection == "none" else f"{1 - args.mix_real:.10g}"]
    if selection != "none":
        out += ["--filter_dir", str(filter_dir)]
    out += ["--augment_real", str(augment).lower()]
    if augment:
        out += ["--real_augmented_dir", str(exp.real_augmented)]
    return [*out, "--final_eval_splits", args.split, *args.extra_train_args]


def prune_weights(train_dir: Path) -> int:
    """Delete the weights and checkpoints of a finished run; returns the bytes freed."""
    doomed = [p for p in train_dir.glob("checkpoint-*") if p.is_dir()]
    doomed += [p for p in train_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file()]
    freed = 0
    for p in doomed:
        freed += sum(f.stat().st_size for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return freed


def run_arm(
    arm: str, seed: int, cfg: str | None, exp: ExperimentPaths, args, filter_dir: Path | None, augment: bool
) -> Path:
    """Train (unless zero-shot) and decode the test split for one arm and seed; returns its hyps.jsonl.

    A trained arm's hyps come from the train stage's own final evaluation of the saved model.
    """
    out = arm_dir(exp, arm, seed)
    arm_paths = ExperimentPaths.of(out)
    eval_dir = (
        arm_paths.eval(paths.ZERO_SHOT_EVAL) if arm == "zero_shot" else arm_paths.final_eval(args.split)
    )
    common = [*_config(cfg), "--output_dir", str(out), "--seed", str(seed)]
    if arm == "zero_shot":
        cmd = ["recipe.evaluate", "--model", args.base_model, "--eval_name", paths.ZERO_SHOT_EVAL]
        cmd += ["--dataset", str(exp.data), "--split", args.split]
    else:
        cmd = ["recipe.train", *train_overrides(arm, args, exp, filter_dir, augment)]
    hyps = eval_dir / "hyps.jsonl"
    inputs = [Path(cfg)] if cfg else []
    # the splits' state.json hold their content fingerprints (a rerun of prepare on the same data
    # keeps them; its report's timings would not)
    inputs += [exp.data / split / "state.json" for split in ("target_train", args.split)]
    inputs += [filter_dir / paths.FILTER_REPORT] if filter_dir else []
    _run_once([sys.executable, "-m", cmd[0], *common, *cmd[1:]], out, hyps, f"{arm} seed {seed}", inputs)
    if arm != "zero_shot" and not args.keep_models and arm_paths.train.is_dir():
        freed = prune_weights(arm_paths.train)
        if freed:
            log.info(
                "%s seed %d: deleted %.0f MB of weights (ablation.keep_models: false)", arm, seed, freed / 1e6
            )
    return hyps


def check_args(args, exp: ExperimentPaths) -> bool:
    """Check what the experiment holds for the arms (their names and mix_real are checked with the
    config, ``AblationArgs``); returns whether the trained arms augment the real data."""
    needs_candidates = any(ARM_CANDIDATES.get(a, "none") != "none" for a in args.arms)
    if needs_candidates and not exp.candidates_dataset.exists():
        raise FileNotFoundError(
            f"{exp.candidates_dataset} not found: run the prepare and generate stages first"
        )
    augment = args.augment_real == "on" or (args.augment_real == "auto" and exp.real_augmented.exists())
    if augment and not exp.real_augmented.exists():
        raise FileNotFoundError(
            f"{exp.real_augmented} not found (augment_real: on): run generate with copies_per_utterance > 0"
        )
    return augment


def ablation(run, args, cfg: str | None) -> dict:
    exp = ExperimentPaths.of(run.output_dir)
    augment = check_args(args, exp)
    if not args.base_model:
        train_cfg = load_yaml(cfg).get("train", {}) if cfg else {}
        args.base_model = train_cfg.get("model_name_or_path", TrainArgs.model_name_or_path)
    seeds = [run.seed + k for k in range(args.seeds)]

    # 1. the filter, once per seed, before any training (a refused arm set costs no training)
    filters, filter_reports = {}, {}
    if any(ARM_CANDIDATES.get(a, "none") != "none" for a in args.arms):
        for s in seeds:
            filters[s] = run_seed_filter(s, cfg, exp)
            report = files.read_json(filters[s] / paths.FILTER_REPORT)
            refuse_duplicate_arms(args.arms, s, report)
            filter_reports[s] = {k: report.get(k) for k in ("mode", "n_accepted", "n_candidates")}

    # 2. every arm and seed; zero-shot decoding is deterministic, so it runs once
    results = {}
    for arm in args.arms:
        arm_seeds = seeds[:1] if arm == "zero_shot" else seeds
        hyps = [run_arm(arm, s, cfg, exp, args, filters.get(s), augment) for s in arm_seeds]
        results[arm] = [read_hyps(h) for h in hyps]

    # 3. statistics, table and figure
    summary = summarize(results, n_boot=args.bootstrap_samples, seed=run.seed)
    summary["seeds"] = seeds
    summary["settings"] = {
        "mix_real": args.mix_real,
        "augment_real": augment,
        "extra_train_args": args.extra_train_args,
        "filter_per_seed": filter_reports,
    }
    out = exp.ablation
    md = to_markdown(summary)
    # Ablations run side by side (other seeds) each summarise their own runs; the lock keeps the
    # three files from one of them, never a mix.
    with output_lock(out / "ablation.json", "ablation summary"):
        files.write_json(summary, out / "ablation.json")
        files.atomic_file(out / "ablation.md", lambda tmp: Path(tmp).write_text(md))
        plot(summary, out / "ablation.png")
    print(md)
    log.info("ablation: %s, %s, %s", out / "ablation.md", out / "ablation.json", out / "ablation.png")
    return summary


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    cfg = pre.parse_known_args(argv)[0].config
    run, args = parse_cli("ablation", argv, description=__doc__)
    ablation(run, args, cfg)


if __name__ == "__main__":
    main()
