"""Stage `ablation`: does the filter help? The same training, arm by arm, seed by seed.

    python -m recipe.ablation --config configs/demo.yaml --seeds 3

Arms (every trained arm uses the `train` section unchanged except the candidate selection):
  zero_shot      the base checkpoint, no training
  real_only      target_train only
  real+all       target_train + every candidate
  real+random    target_train + a seeded random subset of candidates as large as the accepted set:
                 the control that separates the filter's choice from simply having less data
  real+accepted  target_train + the filter's accepted candidates
  real+weighted  target_train + every candidate, drawn in proportion to its importance weight

Reads `<output_dir>/data` and `<output_dir>/filter`; writes `<output_dir>/ablation/`: one folder
per arm and seed (model, train report, hyps), `ablation.json`, `ablation.md` and `ablation.png`.
Per arm: WER averaged over seeds, its standard deviation over seeds and a bootstrap 95% CI over
utterances; paired bootstrap of `real+accepted` against every other arm (utterance errors summed
over seeds, so each comparison pairs the same utterances). A finished run is reused on rerun.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

from core import files, paths
from core.config import LOG_FORMAT, load_yaml, parse_args
from core.paths import ExperimentPaths
from recipe.evaluate import read_hyps
from recipe.metrics.errors import bootstrap_ci, error_counts, format_p, paired_bootstrap
from recipe.train_args import TrainArgs

log = logging.getLogger(__name__)

ARM_CANDIDATES = {
    "real_only": "none",
    "real+all": "all",
    "real+random": "random",
    "real+accepted": "accepted",
    "real+weighted": "weighted",
}
ARMS = ("zero_shot", *ARM_CANDIDATES)
REFERENCE_ARM = "real+accepted"


def _run(cmd: list[str]) -> None:
    log.info("running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def run_arm(arm: str, seed: int, cfg: str | None, exp: ExperimentPaths, args) -> Path:
    """Train (unless zero-shot) and decode the test split for one arm and seed; returns its hyps.jsonl.

    A trained arm's hyps come from the train stage's own final evaluation of the saved model.
    """
    out = exp.ablation / arm.replace("+", "_") / ("base" if arm == "zero_shot" else f"seed{seed}")
    arm_paths = ExperimentPaths.of(out)
    eval_dir = (
        arm_paths.eval(paths.ZERO_SHOT_EVAL) if arm == "zero_shot" else arm_paths.final_eval(args.split)
    )
    hyps = eval_dir / "hyps.jsonl"
    if hyps.is_file():
        log.info("%s seed %d: done, reusing %s", arm, seed, hyps)
        return hyps
    common = [*(["--config", cfg] if cfg else []), "--output_dir", str(out), "--seed", str(seed)]
    if arm == "zero_shot":
        cmd = ["recipe.evaluate", "--model", args.base_model, "--eval_name", paths.ZERO_SHOT_EVAL]
        cmd += ["--dataset", str(exp.data), "--split", args.split]
    else:
        cmd = ["recipe.train", "--data_dir", str(exp.data), "--filter_dir", str(exp.filter)]
        cmd += [
            "--use_candidates",
            ARM_CANDIDATES[arm],
            "--final_eval_splits",
            args.split,
            *args.extra_train_args,
        ]
    _run([sys.executable, "-m", cmd[0], *common, *cmd[1:]])
    return hyps


def summarize(results: dict[str, list[list[dict]]], n_boot: int, seed: int) -> dict:
    """Per-arm WER over seeds and paired comparisons, from each run's hyps.jsonl records."""
    ids = [r["id"] for r in next(iter(results.values()))[0]]
    refs = None
    per_arm = {}
    for arm, runs in results.items():
        errs = []
        for recs in runs:
            by_id = {r["id"]: r for r in recs}
            if set(by_id) != set(ids):
                raise ValueError(f"arm {arm}: a run decoded other utterances than the rest; rerun it")
            ordered = [by_id[i] for i in ids]
            refs = [r["ref_norm"] for r in ordered]
            c = error_counts(refs, [r["hyp_norm"] for r in ordered], "word")
            errs.append(c.errors)
            ref_len = c.ref_len
        errs = np.array(errs)
        wers = errs.sum(1) / ref_len.sum()
        # CI of the seed-averaged WER: resample utterances, keep every seed's errors on them.
        lo, hi = bootstrap_ci(errs.sum(0), ref_len * len(errs), n_boot=n_boot, seed=seed)
        per_arm[arm] = {
            "wer_mean": float(wers.mean()),
            "wer_std_over_seeds": float(wers.std(ddof=1)) if len(wers) > 1 else 0.0,
            "wer_per_seed": [float(w) for w in wers],
            "wer_ci": [lo, hi],
            "n_seeds": len(wers),
            "_errors": errs,
            "_ref_len": ref_len,
        }
    comparisons = {}
    if REFERENCE_ARM in per_arm:
        ref = per_arm[REFERENCE_ARM]
        n_seeds = ref["n_seeds"]
        for arm, s in per_arm.items():
            if arm == REFERENCE_ARM:
                continue
            # Scale each arm's summed errors to the same number of seeds (zero-shot has one run).
            ea = s["_errors"].sum(0) * (n_seeds / s["n_seeds"])
            comparisons[arm] = paired_bootstrap(
                ea, ref["_errors"].sum(0), ref["_ref_len"] * n_seeds, n_boot=n_boot, seed=seed
            )
    for s in per_arm.values():
        s.pop("_errors"), s.pop("_ref_len")
    return {"n_utterances": len(ids), "arms": per_arm, f"{REFERENCE_ARM}_vs": comparisons}


def to_markdown(summary: dict) -> str:
    lines = [
        f"| arm | WER mean over seeds | 95% CI (utterances) | std over seeds | seeds | {REFERENCE_ARM} minus arm (95% CI) | p |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    comps = summary[f"{REFERENCE_ARM}_vs"]
    for arm, s in summary["arms"].items():
        c = comps.get(arm)
        delta = f"{100 * c['delta']:+.2f} [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]" if c else "-"
        p = format_p(c["p_value"], c["n_boot"]) if c else "-"
        lines.append(
            f"| {arm} | {100 * s['wer_mean']:.2f}% | [{100 * s['wer_ci'][0]:.2f}, {100 * s['wer_ci'][1]:.2f}] | "
            f"{100 * s['wer_std_over_seeds']:.2f} | {s['n_seeds']} | {delta} | {p} |"
        )
    return (
        "\n".join(lines)
        + f"\n\n{summary['n_utterances']} test utterances; negative delta: {REFERENCE_ARM} is better.\n"
    )


def plot(summary: dict, path: Path) -> None:
    """Bar chart of each arm's mean WER with its CI, one dot per seed."""
    # Imported here: the backend must be chosen before pyplot is first imported, and only this
    # figure needs matplotlib (a second or so of start-up the summary does not need).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    means = [100 * summary["arms"][a]["wer_mean"] for a in arms]
    lo = [m - 100 * summary["arms"][a]["wer_ci"][0] for m, a in zip(means, arms, strict=True)]
    hi = [100 * summary["arms"][a]["wer_ci"][1] - m for m, a in zip(means, arms, strict=True)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    colors = ["tab:green" if a == REFERENCE_ARM else "tab:gray" for a in arms]
    ax.bar(arms, means, yerr=[lo, hi], capsize=4, color=colors)
    for i, a in enumerate(arms):
        for w in summary["arms"][a]["wer_per_seed"]:
            ax.plot(i, 100 * w, "k.", ms=4)
    ax.set_ylabel("WER on target_test (%)")
    ax.set_title("Ablation: mean over seeds, 95% bootstrap CI, dots = seeds")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ablation(run, args, cfg: str | None) -> dict:
    exp = ExperimentPaths.of(run.output_dir)
    scored = exp.filter / paths.SCORED
    if any(a != "zero_shot" and a != "real_only" for a in args.arms) and not scored.exists():
        raise FileNotFoundError(f"{scored} not found: run the prepare, generate and filter stages first")
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arm(s) {sorted(unknown)}; arms: {list(ARMS)}")
    if not args.base_model:
        train_cfg = load_yaml(cfg).get("train", {}) if cfg else {}
        args.base_model = train_cfg.get("model_name_or_path", TrainArgs.model_name_or_path)
    seeds = [run.seed + k for k in range(args.seeds)]
    results = {}
    for arm in args.arms:
        arm_seeds = seeds[:1] if arm == "zero_shot" else seeds  # zero-shot decoding is deterministic
        results[arm] = [read_hyps(run_arm(arm, s, cfg, exp, args)) for s in arm_seeds]
    summary = summarize(results, n_boot=args.bootstrap_samples, seed=run.seed)
    summary["seeds"] = seeds
    out = exp.ablation
    files.write_json(summary, out / "ablation.json")
    md = to_markdown(summary)
    (out / "ablation.md").write_text(md)
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
    run, args = parse_args("ablation", argv, description=__doc__)
    ablation(run, args, cfg)


if __name__ == "__main__":
    main()
