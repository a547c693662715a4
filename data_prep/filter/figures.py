"""The filter's figures: the ratio distribution against the bound M, and log r and acceptance per group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from core.seeding import stream_rng
from data_prep.filter.groups import KINDS, group_members

# Groups drawn per figure: a figure with 200 voices says nothing, the 25 largest fit one page.
MAX_GROUPS = 25
# Points drawn per group in the strip plots: more only slows matplotlib down (1M points take
# tens of seconds) without changing what the eye sees; accepted points are drawn first.
MAX_POINTS_PER_GROUP = 2_000
DPI = 110


def plot_figures(
    fig_dir: Path,
    keys,
    log_ratio,
    accepted,
    log_m,
    groups,
    weights,
    mode: str,
    seed: int,
    target_log_ratio=None,
) -> list[str]:
    """`ratio_distribution.png` (log r of all candidates, of the accepted or weighted ones, of the
    out-of-fold target, and log M) and `per_<kind>.png` (each candidate's log r per group, and the
    acceptance rate or mean weight of the group). ``log_m`` None: no single M to draw (grouped
    sampling has one per text). Returns the file names written."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    plot_ratio_distribution(fig_dir / "ratio_distribution.png", log_ratio, accepted, log_m, weights, mode,
                            target_log_ratio)  # fmt: skip
    written = ["ratio_distribution.png"]
    rng = stream_rng(seed, "filter", "figures")
    for kind in KINDS:
        if groups[kind]:
            plot_per_group(fig_dir / f"per_{kind}.png", kind, groups[kind], group_members(keys, kind),
                           log_ratio, accepted, log_m, mode, rng)  # fmt: skip
            written.append(f"per_{kind}.png")
    return written


def plot_ratio_distribution(
    path: Path, log_ratio, accepted, log_m, weights, mode: str, target_log_ratio
) -> None:
    shown = log_ratio if target_log_ratio is None else np.r_[log_ratio, target_log_ratio]
    # The lowest 0.5% are cut: a long left tail of hopeless candidates would squeeze the region
    # that matters (near log M) into a few bins. Values outside the range go to the edge bins.
    lo, hi = np.percentile(shown, 0.5), max(float(np.max(shown)), -np.inf if log_m is None else log_m) + 0.5
    bins = np.linspace(lo, hi, 50)

    def clipped(x):
        return np.clip(x, lo, hi)

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.hist(
        clipped(log_ratio), bins=bins, alpha=0.6, label=f"all candidates ({len(log_ratio)})", color="tab:gray"
    )
    if mode == "weights":
        ax.hist(clipped(log_ratio), bins=bins, weights=weights, alpha=0.7, color="tab:green",
                label="candidates x importance weight")  # fmt: skip
    else:
        ax.hist(clipped(log_ratio[accepted]), bins=bins, alpha=0.8, color="tab:green",
                label=f"accepted ({int(accepted.sum())})")  # fmt: skip
        if log_m is not None:
            ax.axvline(log_m, color="tab:red", ls="--", label=f"log M = {log_m:.2f}")
    ax.set_xlabel("log r(x) = log p_target(x) - log q_candidates(x)")
    ax.set_ylabel("candidates")
    handles, labels = ax.get_legend_handles_labels()
    if target_log_ratio is not None:
        # Its own axis: the target set is usually far smaller than the candidate set.
        ax2 = ax.twinx()
        ax2.hist(clipped(target_log_ratio), bins=bins, histtype="step", lw=1.5, color="tab:blue",
                 label=f"target, out-of-fold ({len(target_log_ratio)}, right axis)")  # fmt: skip
        ax2.set_ylabel("target utterances", color="tab:blue")
        ax2.tick_params(axis="y", colors="tab:blue")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper left", fontsize=8)
    ax.set_title("Ratio distribution and the rejection bound M")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def plot_per_group(
    path: Path, kind: str, stats: dict, members: dict, log_ratio, accepted, log_m, mode: str, rng
) -> None:
    names = sorted(stats, key=lambda g: (-stats[g]["candidates"], g))[:MAX_GROUPS]
    fig = Figure(figsize=(12, 0.32 * len(names) + 1.8))
    axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    highlight = accepted if mode != "weights" else np.zeros_like(accepted)  # weights: all are kept
    for row, g in enumerate(names):
        ix = members[g]
        # Rejected, then accepted on top and larger; each a seeded subset of at most
        # MAX_POINTS_PER_GROUP, so the few accepted points are never lost among the others.
        for part, color, size in (
            (ix[~highlight[ix]], "tab:gray", 6),
            (ix[highlight[ix]], "tab:green", 18),
        ):
            part = rng.permutation(part)[:MAX_POINTS_PER_GROUP]
            jitter = rng.uniform(-0.3, 0.3, len(part))
            axes[0].scatter(log_ratio[part], row + jitter, s=size, c=color, alpha=0.7, linewidths=0)
    if mode != "weights" and log_m is not None:
        axes[0].axvline(log_m, color="tab:red", ls="--", label=f"log M = {log_m:.2f}")
        axes[0].legend(loc="best", fontsize=7)
    axes[0].set_yticks(range(len(names)), names, fontsize=7)
    axes[0].set_xlabel(
        "log r of each candidate (green: accepted)" if mode != "weights" else "log r of each candidate"
    )
    if mode == "weights":
        values = [stats[g]["mean_weight"] for g in names]
        text = [f"{v:.2f}" for v in values]
        axes[1].set_xlabel("mean importance weight (1 = average)")
    else:
        values = [100 * stats[g]["acceptance_rate"] for g in names]
        text = [f"{stats[g]['accepted']}/{stats[g]['candidates']}" for g in names]
        axes[1].set_xlabel("accepted (%)")
    axes[1].barh(range(len(names)), values, color="tab:green")
    for row, (v, t) in enumerate(zip(values, text, strict=True)):
        axes[1].text(v, row, f" {t}", va="center", fontsize=7)
    axes[1].set_xlim(0, 1.2 * max(max(values), 1e-9))  # room for the labels
    axes[0].invert_yaxis()  # shared y: largest group on top in both panels
    shown_note = f" (the {len(names)} largest of {len(stats)})" if len(stats) > len(names) else ""
    fig.suptitle(f"log-ratio and {'weight' if mode == 'weights' else 'acceptance'} per {kind}{shown_note}")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
