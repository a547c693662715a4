"""The ablation's statistics and its table and figure, from each run's decoding records.

Per arm: the WER of every seed, their mean and standard deviation, and a 95% CI of the mean from
the hierarchical bootstrap (recipe.metrics.seeds: seeds resampled, then utterances). Against
`real+accepted`: the difference of mean WERs with its hierarchical-bootstrap 95% CI and Welch's
t-test on the per-seed WERs. Both respect that seeds vary: a pooled utterance bootstrap does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.asr.errors import error_counts
from recipe.ablation_args import REFERENCE_ARM
from recipe.metrics.seeds import format_welch_p, hierarchical_bootstrap, percentile_ci, welch_test

METHOD = (
    "CIs: hierarchical bootstrap ({n_boot} resamples: each arm's seeds drawn with replacement, then the "
    "test utterances, one draw shared by every seed and arm). p: Welch's t-test on the per-seed WERs "
    "(zero_shot, decoded once, counts as a constant)."
)


def error_matrix(arm: str, runs: list[list[dict]], ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``[runs, utterances]`` word errors in the order of ``ids``, and the reference lengths."""
    errs, ref_len = [], None
    for recs in runs:
        by_id = {r["id"]: r for r in recs}
        if set(by_id) != set(ids):
            raise ValueError(f"arm {arm}: a run decoded other utterances than the rest; rerun it")
        ordered = [by_id[i] for i in ids]
        c = error_counts([r["ref_norm"] for r in ordered], [r["hyp_norm"] for r in ordered], "word")
        errs.append(c.errors)
        ref_len = c.ref_len
    return np.array(errs), ref_len


def summarize(results: dict[str, list[list[dict]]], n_boot: int, seed: int) -> dict:
    """Per-arm WERs over seeds and the comparisons with the reference arm, from hyps.jsonl records."""
    ids = [r["id"] for r in next(iter(results.values()))[0]]
    errors = {arm: error_matrix(arm, runs, ids) for arm, runs in results.items()}
    ref_len = next(iter(errors.values()))[1]
    arms = list(errors)
    boot = dict(
        zip(arms, hierarchical_bootstrap([errors[a][0] for a in arms], ref_len, n_boot, seed), strict=True)
    )
    per_arm = {}
    for arm, (errs, _) in errors.items():
        wers = errs.sum(1) / ref_len.sum()
        per_arm[arm] = {
            "wer_mean": float(wers.mean()),
            "wer_std_over_seeds": float(wers.std(ddof=1)) if len(wers) > 1 else 0.0,
            "wer_per_seed": [float(w) for w in wers],
            "wer_ci": list(percentile_ci(boot[arm])),
            "n_seeds": len(wers),
        }
    comparisons = {}
    if REFERENCE_ARM in per_arm:
        ref = per_arm[REFERENCE_ARM]
        for arm, s in per_arm.items():
            if arm == REFERENCE_ARM:
                continue
            lo, hi = percentile_ci(boot[REFERENCE_ARM] - boot[arm])
            welch = welch_test(ref["wer_per_seed"], s["wer_per_seed"])
            comparisons[arm] = {
                "delta": ref["wer_mean"] - s["wer_mean"],
                "ci_low": lo,
                "ci_high": hi,
                "p_value": welch["p_value"],
                "welch_t": welch["t"],
                "welch_df": welch["df"],
            }
    return {"n_utterances": len(ids), "n_boot": n_boot, "arms": per_arm, f"{REFERENCE_ARM}_vs": comparisons}


def _pct_list(values: list[float]) -> str:
    return ", ".join(f"{100 * v:.2f}" for v in values)


def to_markdown(summary: dict) -> str:
    lines = [
        f"| arm | WER mean over seeds | per seed | std over seeds | 95% CI (seeds, utterances) | {REFERENCE_ARM} minus arm (95% CI) | Welch t (df) | p |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    comps = summary[f"{REFERENCE_ARM}_vs"]
    for arm, s in summary["arms"].items():
        c = comps.get(arm)
        delta = f"{100 * c['delta']:+.2f} [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]" if c else "-"
        t = f"{c['welch_t']:+.2f} ({c['welch_df']:.1f})" if c and np.isfinite(c["welch_t"]) else "-"
        p = format_welch_p(c["p_value"]) if c else "-"
        lines.append(
            f"| {arm} | {100 * s['wer_mean']:.2f}% | {_pct_list(s['wer_per_seed'])} | "
            f"{100 * s['wer_std_over_seeds']:.2f} | [{100 * s['wer_ci'][0]:.2f}, {100 * s['wer_ci'][1]:.2f}] | "
            f"{delta} | {t} | {p} |"
        )
    notes = [
        f"{summary['n_utterances']} test utterances; negative delta: {REFERENCE_ARM} is better.",
        METHOD.format(n_boot=summary["n_boot"]),
    ]
    settings = summary.get("settings")
    if settings:
        note = (
            f"Every trained arm: {100 * settings['mix_real']:g}% of draws from the real data (candidates: the "
            f"rest), real augmentation {'on' if settings['augment_real'] else 'off'}, the same training arguments."
        )
        if settings["filter_per_seed"]:
            accepted = [
                f"{r['n_accepted']} of {r['n_candidates']}" for r in settings["filter_per_seed"].values()
            ]
            note += " The filter was rerun for every seed; accepted per seed: " + ", ".join(accepted) + "."
        notes.append(note)
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


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
    ax.set_title("Ablation: mean over seeds, 95% CI over seeds and utterances, dots = seeds")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
