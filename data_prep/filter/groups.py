"""Which generator, voice and perturbation made each candidate, and the filter's numbers per group
(for the report and the figures)."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from core import schema

KINDS = ("generator", "voice", "perturbation")


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
    for kind in KINDS:
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
