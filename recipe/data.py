"""What the train stage trains and evaluates on: the parts of the training mix (real target
speech, the filter's candidates, the source split), their sampling weights and the length guards.

Every part is read from disk in the canonical schema (``core.schema``), where the prepare and
filter stages wrote it (``core.paths``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import concatenate_datasets

from core import files, paths, schema
from core.asr.normalize import get_normalizer
from core.config import ConfigError, RunArgs
from core.paths import ExperimentPaths
from core.seeding import stream_rng
from recipe.packing import WindowDataset

logger = logging.getLogger(__name__)

# Canonical columns training reads (plus `generator`/`origin` for the card's data composition).
TRAIN_COLUMNS = ["id", "audio", "text", "duration", "origin", "generator"]


@dataclass
class Part:
    """One source of training rows and each row's natural sampling mass (1, or the filter's weight)."""

    name: str
    rows: object  # datasets.Dataset, audio left as WAV bytes
    mass: np.ndarray


@dataclass
class TrainingPool:
    """The rows of every part the model can train on, concatenated, with their sampling weights
    (None: plain shuffling), and per part the kept row indices and the dropped counts by reason."""

    rows: object  # datasets.Dataset
    weights: np.ndarray | None
    kept: dict[str, np.ndarray]
    dropped: dict[str, dict[str, int]]


def data_dir(run: RunArgs, targs) -> Path:
    """The prepare stage's dataset training reads (train.data_dir, else the experiment's)."""
    return Path(targs.data_dir or ExperimentPaths.of(run.output_dir).data)


def filter_dir(run: RunArgs, targs) -> Path:
    """The filter stage's folder training reads (train.filter_dir, else the experiment's)."""
    return Path(targs.filter_dir or ExperimentPaths.of(run.output_dir).filter)


def real_augmented_dir(run: RunArgs, targs) -> Path:
    """The generate stage's copies of target_train training reads (train.real_augmented_dir, else the experiment's)."""
    return Path(targs.real_augmented_dir or ExperimentPaths.of(run.output_dir).real_augmented)


def canonical(ds, where: str):
    """``ds`` reduced to TRAIN_COLUMNS with the canonical features (audio left undecoded)."""
    missing = [c for c in TRAIN_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{where} lacks column(s) {missing}; it must follow core/schema.py (rerun the stage that wrote it)"
        )
    ds = schema.without_audio_decoding(ds.select_columns(TRAIN_COLUMNS))
    target = schema.features()
    target["audio"] = ds.features["audio"]
    target = type(target)({c: target[c] for c in TRAIN_COLUMNS})
    if ds.features != target:  # e.g. duration written as float64: the parts must concatenate
        logger.info("%s: casting %s to the canonical schema", where, dict(ds.features))
        ds = ds.cast(target)
    return ds


def normalized_transcripts(rows, language: str, where: str):
    """``rows`` with every transcript in the scoring normalizer's style (see ``normalize_labels``)."""
    normalize = get_normalizer(language)
    old = rows["text"]
    new = [normalize(t) for t in old]
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    if changed:
        logger.info(
            "normalize_labels: %s: %d of %d transcripts rewritten, e.g. %r -> %r",
            where,
            len(changed),
            len(old),
            *changed[0],
        )
    return rows.remove_columns("text").add_column("text", new).select_columns(TRAIN_COLUMNS)


def select_candidates(scored, mode: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the scored candidates for an ablation arm, and their sampling mass.

    ``all``: every candidate; ``random``: a seeded uniform subset as large as the accepted set
    (the control that separates "more data" from "the filter's choice"); ``weighted``: every
    candidate with its ``weight`` as mass; ``anti``: :func:`anti_selection`, the lowest ratios,
    size-matched to the accepted set group by group (the control that asks whether the ratio
    carries information at all).
    """
    n = len(scored)
    if mode == "all":
        return np.arange(n), np.ones(n)
    if mode == "random":
        idx = random_selection(np.asarray(scored["accepted"], dtype=bool), _sample_groups(scored), rng)
        return idx, np.ones(len(idx))
    if mode == "weighted":
        if "weight" not in scored.column_names:
            raise ValueError(
                "the scored candidates have no `weight` column: rerun the filter stage (it writes `weight` in every mode)"
            )
        w = np.asarray(scored["weight"], dtype=np.float64)
        if not np.isfinite(w).all() or np.any(w < 0):
            raise ValueError("the scored candidates' `weight` column has negative or non-finite values")
        return np.arange(n), w
    if mode == "anti":
        if "log_ratio" not in scored.column_names:
            raise ValueError("the scored candidates have no `log_ratio` column: rerun the filter stage")
        accepted = np.asarray(scored["accepted"], dtype=bool)
        idx = anti_selection(
            np.asarray(scored["log_ratio"], dtype=np.float64), accepted, _sample_groups(scored)
        )
        logger.info(
            "anti: %d candidates with the lowest log ratios (as many as accepted, per sampling group), %d of them "
            "also accepted", len(idx), int(accepted[idx].sum()),
        )  # fmt: skip
        return idx, np.ones(len(idx))
    raise ValueError(f"unknown candidate selection {mode!r}")


def _sample_groups(scored):
    # Filter outputs from before grouped sampling have no `sample_group`: one group, as they sampled.
    return scored["sample_group"] if "sample_group" in scored.column_names else None


def _group_members(n: int, groups) -> np.ndarray:
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    return np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]


def random_selection(accepted: np.ndarray, groups, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a uniform draw, in every group as many as were accepted in it (``groups``
    None: one group): the same size and the same texts as the accepted set, so under a grouped
    policy the arm differs from real+accepted only by which renderings of each text it holds."""
    accepted = np.asarray(accepted, dtype=bool)
    member = _group_members(len(accepted), groups)
    chosen = []
    for g in np.unique(member):
        rows = np.flatnonzero(member == g)
        k = int(accepted[rows].sum())
        if k:
            chosen.append(rng.choice(rows, size=k, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def anti_selection(log_ratio: np.ndarray, accepted: np.ndarray, groups=None) -> np.ndarray:
    """Sorted indices of the candidates with the lowest log ratios: in every group as many as were
    accepted in it (``groups`` None: one group, as many as accepted in all).

    The same size and, when the filter sampled per text, the same texts as the accepted set, so
    the arm differs from real+accepted only by where in the ratio's order its renderings come
    from. Ties are broken by row order, so the choice is deterministic.
    """
    log_ratio, accepted = np.asarray(log_ratio, dtype=np.float64), np.asarray(accepted, dtype=bool)
    if log_ratio.shape != accepted.shape:
        raise ValueError(f"{len(log_ratio)} log ratios for {len(accepted)} accepted flags")
    member = _group_members(len(log_ratio), groups)
    # Sorted by group, then log ratio, then row: each group's lowest come first within it.
    order = np.lexsort((np.arange(len(log_ratio)), log_ratio, member))
    starts = np.searchsorted(member[order], np.arange(member.max(initial=0) + 1))
    quota = np.bincount(member, weights=accepted, minlength=len(starts)).astype(np.int64)
    rank = np.arange(len(order)) - starts[member[order]]  # position of each row within its group
    return np.sort(order[rank < quota[member[order]]])


def _filter_output(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run the filter stage first, or set use_candidates: none"
        )
    return path


def load_parts(run: RunArgs, targs, rng: np.random.Generator) -> list[Part]:
    """The real target split (with ``augment_real``, its perturbed copies too), the selected
    candidates and (optionally) the source split; with ``normalize_labels`` every transcript in the
    scoring normalizer's style."""
    data = data_dir(run, targs)
    real = canonical(schema.load_split(data, targs.train_split), f"{data}[{targs.train_split}]")
    if targs.augment_real:
        path = real_augmented_dir(run, targs)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: run the generate stage with copies_per_utterance > 0 (and "
                "target_copies_as_candidates: false), or set augment_real: false"
            )
        real = concatenate_datasets([real, canonical(schema.load_split(path), str(path))])
    parts = [Part("real", real, np.ones(len(real)))]
    if targs.use_candidates == "accepted":
        report = _filter_output(filter_dir(run, targs) / paths.FILTER_REPORT)
        if files.read_json(report)["n_accepted"] == 0:
            # datasets cannot load back an empty saved dataset, and an empty part is the truth here:
            # the report's composition then shows 0 candidates.
            logger.warning(
                "the filter accepted no candidate (%s): this run trains without candidates; to get some, "
                "use policy quantile:q or budget:N, or broaden the generators",
                report,
            )
            parts.append(Part("candidates", real.select([]), np.ones(0)))
        else:
            path = _filter_output(filter_dir(run, targs) / paths.ACCEPTED)
            rows = canonical(schema.load_split(path), str(path))
            parts.append(Part("candidates", rows, np.ones(len(rows))))
    elif targs.use_candidates != "none":
        path = _filter_output(filter_dir(run, targs) / paths.SCORED)
        scored = schema.load_split(path)
        idx, mass = select_candidates(scored, targs.use_candidates, rng)
        parts.append(Part("candidates", canonical(scored, str(path)).select(idx), mass))
    if targs.use_source:
        source = canonical(schema.load_split(data, "source"), f"{data}[source]")
        parts.append(Part("source", source, np.ones(len(source))))
    if targs.normalize_labels:
        parts = [Part(p.name, normalized_transcripts(p.rows, targs.language, p.name), p.mass) for p in parts]
    return parts


def mix_weights(masses: dict[str, np.ndarray], ratios: dict[str, float]) -> np.ndarray | None:
    """Per-row sampling weights over the parts concatenated in ``masses``' order.

    With every ratio 0 each row keeps its natural mass (None when all masses are 1: plain
    shuffling). Otherwise part k gets ``ratios[k] / sum(ratios)`` of the total mass, spread over
    its rows in proportion to their natural mass; a part with ratio 0 is not drawn from. The
    total mass, i.e. the number of draws per pass over the data, stays the natural one.
    """
    unknown = [k for k, r in ratios.items() if r and k not in masses]
    if unknown:
        raise ConfigError(
            f"mixing ratio set for {unknown}, which are not in the training mix (parts: {list(masses)})"
        )
    if any(r < 0 for r in ratios.values()):
        raise ConfigError(f"mixing ratios must be >= 0, got {ratios}")
    total = float(sum(m.sum() for m in masses.values()))
    if not any(ratios.get(k, 0.0) for k in masses):
        if all(np.all(m == 1.0) for m in masses.values()):
            return None
        return np.concatenate(list(masses.values()))
    norm = sum(ratios.get(k, 0.0) for k in masses)
    out = []
    for k, m in masses.items():
        share = ratios.get(k, 0.0) / norm
        out.append(m / m.sum() * share * total if m.sum() > 0 else m)
    return np.concatenate(out)


def apply_guards(asr, rows, targs, what: str) -> tuple[np.ndarray, dict[str, int]]:
    """Indices of rows the model can train on, and the dropped counts by reason (logged)."""
    if len(rows) == 0:  # an empty part (the filter accepted nothing): tokenizers fail on an empty batch
        return np.zeros(0, dtype=np.int64), {}
    durations = np.asarray(rows["duration"], dtype=np.float64)
    texts = rows["text"]
    problems = asr.length_problems(durations, texts, targs)
    bad = np.zeros(len(rows), dtype=bool)
    dropped: dict[str, int] = {}
    for reason, mask in problems.items():
        new = mask & ~bad  # count each row under its first reason only
        dropped[reason] = int(new.sum())
        bad |= mask
    for reason, n in dropped.items():
        if n:
            logger.warning(
                "%s: dropped %d of %d utterances (%.1f%%): %s",
                what,
                n,
                len(rows),
                100 * n / len(rows),
                reason,
            )
    logger.info("%s: kept %d of %d utterances", what, int((~bad).sum()), len(rows))
    return np.flatnonzero(~bad), dropped


def training_pool(asr, parts: list[Part], targs) -> TrainingPool:
    """The guarded rows of every part, with the sampling weights of the mixing shares."""
    kept, dropped = {}, {}
    for p in parts:
        kept[p.name], dropped[p.name] = apply_guards(asr, p.rows, targs, p.name)
    rows = concatenate_datasets([p.rows.select(kept[p.name]) for p in parts])
    masses = {p.name: p.mass[kept[p.name]] for p in parts}
    ratios = {"real": targs.mix_real, "candidates": targs.mix_candidates, "source": targs.mix_source}
    weights = mix_weights(masses, ratios)
    if len(rows) == 0:
        raise ValueError("no training utterance is left after the length guards; see the warnings above")
    return TrainingPool(rows, weights, kept, dropped)


def eval_examples(asr, run: RunArgs, targs) -> tuple[WindowDataset, dict[str, int]]:
    """The split evaluated during training, one utterance per example (never packed), guarded
    and capped at ``eval_max_utterances`` by a seeded draw; and its dropped counts."""
    data = data_dir(run, targs)
    rows = canonical(schema.load_split(data, targs.eval_split), f"{data}[{targs.eval_split}]")
    idx, dropped = apply_guards(asr, rows, targs, f"eval {targs.eval_split}")
    if targs.eval_max_utterances and len(idx) > targs.eval_max_utterances:
        idx = np.sort(
            stream_rng(run.seed, "train", "eval_subset").choice(idx, targs.eval_max_utterances, replace=False)
        )
    return WindowDataset(rows, [[int(i)] for i in idx]), dropped


def composition(parts: list[Part], kept: dict[str, np.ndarray]) -> dict:
    """Utterances, hours and origins per part after the guards, and candidates by generator engine."""
    out: dict = {}
    for p in parts:
        rows = p.rows.select(kept[p.name])
        entry = {"utterances": len(rows), "hours": round(float(np.sum(rows["duration"])) / 3600, 4)}
        entry["by_origin"] = dict(sorted(Counter(rows["origin"]).items()))
        if p.name == "candidates":
            engines = Counter()
            for origin, g in zip(rows["origin"], rows["generator"], strict=True):
                try:
                    engines[schema.generator_label(origin, json.loads(g or "{}"))] += 1
                except json.JSONDecodeError:
                    engines["unknown"] += 1
            entry["by_generator"] = dict(sorted(engines.items()))
        out[p.name] = entry
    return out
