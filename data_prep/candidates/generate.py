"""Stage `generate`: candidate utterances from TTS voices and perturbed real speech, with provenance.

    python -m data_prep.generate --config configs/demo.yaml [--key value ...] [--num_proc 8]
    accelerate launch --multi_gpu --num_processes 4 -m data_prep.generate --config ...
    torchrun --nnodes 2 --nproc_per_node 8 ... -m data_prep.generate --config ...

Under a launcher each process reads RANK/WORLD_SIZE and takes shards rank, rank+world, ...
(`accelerate launch --cpu` starts a single process; on CPU-only machines use --num_proc or
torchrun). Several machines need a shared output folder, or `--shard_index` per machine and
one last run to merge.

The filter can only accept what this stage proposes, so the proposal is broad: every voice of
every installed engine, optionally perturbed, plus perturbed copies of the source speakers'
utterances. Perturbed copies of target_train are made too, but kept apart (`real_augmented/`,
unless `target_copies_as_candidates`): they augment the real data, never compete as candidates.

Reads `<output_dir>/data` (prepare stage): `target_train` (texts and audio), `source` (audio),
`protected_texts.json` (the leakage guard). Writes `<output_dir>/candidates/`:
- `shards/shard-XXXXX-of-YYYYY/`: one dataset per shard with its report `shard.json` inside,
  written atomically: a shard folder exists only when it is finished.
- `dataset/`: the candidates of every shard merged (canonical schema; `origin` synthetic or
  perturbed, `parent_id`, `generator` = engine, voice, seed and each perturbation with its parameters).
- `real_augmented/`: the perturbed copies of target_train, same schema (absent when there are none).
- `gate/`: the intelligibility gate's decisions per shard (`<key>/shard-*.json`: hypothesis and CER
  of every gated candidate) and `rejected.jsonl` (what the base model heard in each rejected one).
- `report.json` (counts per engine/voice/op, failures by reason, audio hours, throughput) and
  `config.yaml`.

Steps: 1. plan every job (texts through the leakage guard, voices, seeds) identically in every
process; 2. cut the plan into shards and run this process's unfinished shards; 3. the
intelligibility gate (``gate.py``) decodes them with the base checkpoint; 4. the process that
finds every shard finished merges them, less the candidates that do not say their transcript. A rerun skips finished shards whose fingerprint
(their jobs, the recipe, the inputs) still matches, so a killed run resumes where it stopped.
Each shard is made under a lock: two runs started on one output folder split the shards (each
skips those the other is making, then waits for them before merging), and a temp folder is
removed only when its shard's lock is free, i.e. its maker is dead.
Planning is in ``plan.py``; making candidates, shard by shard, in ``shards.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from datasets import concatenate_datasets, load_from_disk

from core import files, locks, paths, schema
from core.config import run_stage, save_resolved
from core.paths import ExperimentPaths
from core.ranks import rank_and_world
from data_prep.candidates.gate import REJECTED_LIST, Gate
from data_prep.candidates.perturb import load_recipe
from data_prep.candidates.plan import plan_jobs
from data_prep.candidates.shards import (
    SHARD_MARKER,
    ShardTask,
    fingerprint,
    merge_reports,
    run_shards,
    shard_done,
    shard_name,
)

log = logging.getLogger(__name__)

# Candidates per shard when num_shards is 0: small enough that a killed run loses little
# (a few minutes of work), large enough that per-shard overhead (a dataset save) is negligible.
SHARD_SIZE = 500


def merge(
    out_dir: Path,
    num_shards: int,
    fingerprint: str,
    plan: dict[str, Any],
    run,
    stage_args: tuple,
    real_copies: set[str],
    gate: Gate | None,
) -> dict[str, Any] | None:
    """Merge finished shards into ``dataset/`` (the rows whose id is not in ``real_copies``, less
    those the gate rejected) and ``real_augmented/`` (those that are), and write ``report.json``;
    once per fingerprint."""
    with locks.output_lock(out_dir / paths.CANDIDATES_DATASET, "generate merge"):
        report_path = out_dir / "report.json"
        if report_path.is_file() and (out_dir / paths.CANDIDATES_DATASET).is_dir():
            previous = files.read_json(report_path)
            if previous.get("fingerprint") == fingerprint:
                log.info("candidates already merged (fingerprint %s)", fingerprint)
                return previous
        shards = [out_dir / "shards" / shard_name(i, num_shards) for i in range(num_shards)]
        reports = [files.read_json(p / SHARD_MARKER) for p in shards]
        # datasets cannot load back an empty saved dataset (no arrow file): skip empty shards.
        parts = [load_from_disk(str(p)) for p, rep in zip(shards, reports, strict=True) if rep["candidates"]]
        if not parts:
            summary = merge_reports(reports)
            raise RuntimeError(
                f"generate made no candidate at all: {summary['jobs']} jobs, failures {summary['failures']}, "
                f"examples {summary['failure_examples']}; plan {plan}. Check the engines, texts and copies_per_utterance."
            )
        ds = concatenate_datasets(parts)
        is_copy = np.array([i in real_copies for i in ds["id"]], dtype=bool)
        gate_report, rejected = None, set()
        if gate is not None:
            names = [p.name for p in shards]
            meta = _gate_meta(ds)
            rejected, gate_report = gate.rejected(names, meta)
        is_rejected = np.array([i in rejected for i in ds["id"]], dtype=bool)
        cands = ds.select(np.flatnonzero(~is_copy & ~is_rejected))
        augmented = ds.select(np.flatnonzero(is_copy & ~is_rejected))
        if not len(cands):
            if rejected:
                raise RuntimeError(
                    f"the intelligibility gate rejected all {len(rejected)} candidates it decoded (CER above "
                    f"gate_max_cer {gate.args.gate_max_cer} with {gate.args.gate_model}); see {out_dir / 'gate' / REJECTED_LIST} "
                    "for what the model heard; check gate_language and the voices, or raise gate_max_cer"
                )
            raise RuntimeError(
                f"generate made {len(augmented)} perturbed copies of target_train but no candidate: add TTS engines "
                "or a source split, or set target_copies_as_candidates: true"
            )
        files.atomic_save(cands, out_dir / paths.CANDIDATES_DATASET)
        if len(augmented):
            files.atomic_save(augmented, out_dir / paths.REAL_AUGMENTED)
        else:  # a previous merge's copies must not outlive a config that makes none
            shutil.rmtree(out_dir / paths.REAL_AUGMENTED, ignore_errors=True)
        made = merge_reports(reports)
        if gate_report is not None:
            log.info(
                "gate: rejected %d of %d candidates decoded and %d variants of those (CER > %g with %s; by engine %s; "
                "%d decoded again alone; %.0fx real time) -> %s",
                gate_report["rejected"],
                gate_report["decoded"],
                gate_report["variants_rejected_with_their_rendering"],
                gate_report["max_cer"],
                gate_report["model"],
                gate_report["by_engine"],
                gate_report["decoded_alone"],
                gate_report["x_real_time"] or 0,
                out_dir / "gate" / REJECTED_LIST,
            )
        report = {
            "stage": "generate",
            "fingerprint": fingerprint,
            "num_shards": num_shards,
            "plan": plan,
            **made,
            "made": made["candidates"],
            "candidates": len(cands),
            "by_origin": dict(sorted(Counter(cands["origin"]).items())),
            "real_augmented": len(augmented),
            "gate": gate_report,
        }
        save_resolved(out_dir / "config.yaml", "generate", run, *stage_args)
        files.write_json(report, report_path)
    return report


def _gate_meta(ds) -> dict[str, dict[str, str]]:
    """Text, engine and voice of every row, for the gate's report and rejected list."""
    meta = {}
    for i, text, gen in zip(ds["id"], ds["text"], ds["generator"], strict=True):
        g = json.loads(gen)
        meta[i] = {
            "text": text,
            "engine": g.get("engine", ""),
            "voice": g.get("voice", ""),
            "rendering": g.get("rendering", ""),
        }
    return meta


def generate(run, args, gate_args) -> dict[str, Any] | None:
    """Run the stage; returns the merged report, or None while other processes still have shards."""
    t0 = time.time()
    exp = ExperimentPaths.of(run.output_dir)
    data_dir = Path(args.data_dir or exp.data)
    out_dir = exp.candidates
    rank, world = rank_and_world()

    # 1. Plan (the same in every process: it depends only on the config and the inputs).
    jobs, plan = plan_jobs(run, args, data_dir)
    real_copies = (
        set()
        if args.target_copies_as_candidates
        else {j.id for j in jobs if j.kind == "perturb" and j.split == "target_train"}
    )
    recipe = load_recipe(args.perturb_recipe)
    variant_recipe = load_recipe(args.variant_recipe) if args.variant_recipe else None
    gate = Gate(gate_args, out_dir / "gate", args.language) if gate_args.gate else None
    inputs = {split: schema.load_split(data_dir, split)._fingerprint for split in plan["perturb"]}

    # 2. Shards: job i goes to shard i % n, so every shard mixes engines and real speech.
    num_shards = args.num_shards or max(world, math.ceil(len(jobs) / SHARD_SIZE), 1)
    shard_jobs = [tuple(jobs[i::num_shards]) for i in range(num_shards)]
    fingerprints = [fingerprint(sj, recipe, inputs, args.max_duration, variant_recipe) for sj in shard_jobs]
    shards_dir = out_dir / "shards"
    mine = [args.shard_index] if args.shard_index >= 0 else list(range(rank, num_shards, world))
    if any(not 0 <= i < num_shards for i in mine):
        raise ValueError(
            f"shard_index {args.shard_index} is outside [0, {num_shards}): set num_shards explicitly"
        )
    todo = [i for i in mine if not shard_done(shards_dir, i, num_shards, fingerprints[i])]
    log.info(
        "generate: %d jobs (%d perturb, %d tts) in %d shards; process %d/%d runs %d shard(s), %d already done",
        len(jobs),
        plan["jobs"]["perturb"],
        plan["jobs"]["tts"],
        num_shards,
        rank,
        world,
        len(todo),
        len(mine) - len(todo),
    )
    tasks = [
        ShardTask(
            index=i,
            num_shards=num_shards,
            jobs=shard_jobs[i],
            fingerprint=fingerprints[i],
            data_dir=str(data_dir),
            shards_dir=str(shards_dir),
            recipe=args.perturb_recipe,
            variant_recipe=args.variant_recipe,
            max_duration=args.max_duration,
            engine_timeout=args.engine_timeout,
            hf_model=args.hf_model,
            language=args.language,
        )
        for i in todo
    ]
    run_shards(tasks, args.num_proc)

    def shard(i: int) -> tuple[Path, str]:
        return shards_dir / shard_name(i, num_shards), fingerprints[i]

    # 3. The intelligibility gate decodes the shards this process made (the GPU, when there is one).
    if gate is not None:
        gate.decide([shard(i) for i in mine if shard_done(shards_dir, i, num_shards, fingerprints[i])])

    # 4. Merge, by whichever process finds every shard finished (it gates any shard left).
    pending = [i for i in range(num_shards) if not shard_done(shards_dir, i, num_shards, fingerprints[i])]
    if pending:
        log.info(
            "generate: %d of %d shards still pending (other processes or a rerun finish them)",
            len(pending),
            num_shards,
        )
        return None
    if gate is not None:
        gate.decide([shard(i) for i in range(num_shards)])
    # Where the target_train copies go and what the gate rejects change the merged datasets, not the shards.
    split_rule = (
        f"target_copies_as_candidates={args.target_copies_as_candidates};gate={gate.key if gate else 'off'}"
    )
    overall = hashlib.sha256(("".join(fingerprints) + split_rule).encode()).hexdigest()[:16]
    report = merge(out_dir, num_shards, overall, plan, run, (args, gate_args), real_copies, gate)
    log.info(
        "generate: %d candidates (%s), %d perturbed copies of target_train in %s, %.2f h of audio; failures %s; "
        "refused %d test text(s) for TTS, %s for perturbation -> %s (%.0f s)",
        report["candidates"],
        report["by_origin"],
        report["real_augmented"],
        paths.REAL_AUGMENTED,
        report["audio_hours"],
        report["failures"] or "none",
        plan["texts"]["refused_protected"],
        {k: v["refused_protected"] for k, v in plan["perturb"].items()},
        out_dir,
        time.time() - t0,
    )
    return report


def main(argv=None):
    run_stage("generate", generate, argv, __doc__)


if __name__ == "__main__":
    main()
