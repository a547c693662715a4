"""Shards of the generate stage: the worker that turns one ``Job`` into a candidate row, running a
shard (written atomically, with its report as the "finished" marker) and summing shard reports.

A shard is made under its lock (core.locks, ``shards/.shard-XXXXX-of-YYYYY.lock``), so processes
on one output folder (launcher ranks, or two runs started by hand) never make the same shard at
once: one makes it, the others skip it and wait for it before merging.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import resource
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from datasets import Dataset
from tqdm.auto import tqdm

from core import files, locks, pool, schema
from core.seeding import derive_seed
from data_prep.candidates import tts
from data_prep.candidates.perturb import Recipe, load_recipe, perturb
from data_prep.candidates.plan import Job
from data_prep.candidates.speakable import audio_problem

log = logging.getLogger(__name__)

# Bumped when the content of a candidate for the same job changes, so old shards are redone.
FORMAT_VERSION = 2  # 2: synthesized audio must fit its text (speakable.audio_problem)
SHARD_MARKER = "shard.json"
# Failure examples kept per reason in a report: enough to see the pattern, short enough to read.
MAX_EXAMPLES = 5


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """Everything a worker process needs to make one shard (picklable: workers are spawned)."""

    index: int
    num_shards: int
    jobs: tuple[Job, ...]
    fingerprint: str
    data_dir: str
    shards_dir: str
    recipe: str
    max_duration: float
    engine_timeout: float
    variant_recipe: str = ""  # empty: recipe
    hf_model: str = ""
    language: str = "en"
    progress: bool = True


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}"


def shard_done(shards_dir: Path, index: int, num_shards: int, fingerprint: str) -> bool:
    """A shard is finished when its folder holds a marker with the same fingerprint."""
    marker = shards_dir / shard_name(index, num_shards) / SHARD_MARKER
    try:
        return files.read_json(marker)["fingerprint"] == fingerprint
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


def fingerprint(
    jobs: tuple[Job, ...],
    recipe: Recipe,
    inputs: dict[str, str],
    max_duration: float,
    variant_recipe: Recipe | None = None,
) -> str:
    """What a shard's content depends on: its jobs, the recipes, the input splits, the length cap."""
    doc = {
        "version": FORMAT_VERSION,
        "jobs": [dataclasses.astuple(j) for j in jobs],
        "recipe": recipe.to_dict(),
        "inputs": inputs,
        "max_duration": max_duration,
    }
    if any(j.variants for j in jobs):
        doc["variant_recipe"] = (variant_recipe or recipe).to_dict()
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _provenance(job: Job, record: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The `generator` record: the candidate's seed, where its audio came from, each perturbation.

    One candidate seed derives independent seeds for the engine and the recipe (their first
    draws would otherwise be correlated); both derived seeds are recorded so each step replays.
    """
    return {
        **fields,
        "seed": job.seed,
        "recipe": record["recipe"],
        "perturb_seed": record["seed"],
        "ops": record["ops"],
        "peak_scale": record["peak_scale"],
    }


def _resample(samples: np.ndarray, rate: int) -> torch.Tensor:
    wav = torch.from_numpy(np.asarray(samples, dtype=np.float32).reshape(-1))
    return wav if rate == schema.SAMPLE_RATE else AF.resample(wav, rate, schema.SAMPLE_RATE)


def _voice_accent(engine, voice: str) -> str:
    # data_prep.candidates.tts engines label accents; a custom `module:Class` engine may not.
    accent = getattr(engine, "accent", None)
    return accent(voice) if callable(accent) else ""


def _engine_params(engine, voice: str, seed: int) -> dict[str, Any]:
    """The engine's own seeded draws (speaking rate, pitch, ...) for the provenance record."""
    params_for = getattr(engine, "params_for", None)
    return params_for(voice, seed) if callable(params_for) else {}


class _ShardWorker:
    """Makes the candidates of one shard; counts every outcome for the report."""

    def __init__(self, task: ShardTask):
        self.task = task
        self.recipe = load_recipe(task.recipe)
        self.variant_recipe = load_recipe(task.variant_recipe) if task.variant_recipe else self.recipe
        self.splits: dict[str, Any] = {}
        self.stats: dict[str, Any] = {
            "candidates": 0,
            "audio_seconds": 0.0,
            "by_origin": Counter(),
            "by_engine": Counter(),
            "by_voice": Counter(),
            "by_op": Counter(),
            "failures": Counter(),
            "engine_seconds": Counter(),
            "engine_audio_seconds": Counter(),
            "perturb_seconds": 0.0,
            "perturb_audio_seconds": 0.0,
        }
        self.failure_examples: dict[str, list[str]] = {}

    def _split(self, name: str):
        if name not in self.splits:
            self.splits[name] = schema.without_audio_decoding(schema.load_split(self.task.data_dir, name))
        return self.splits[name]

    def _fail(self, reason: str, job: Job, detail: str, count: int = 1) -> None:
        self.stats["failures"][reason] += count
        examples = self.failure_examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{job.id}: {detail}")
        log.debug("candidate %s failed (%s): %s", job.id, reason, detail)

    def _perturb(self, wav: torch.Tensor, job: Job, variant: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        t0 = time.perf_counter()
        if variant:
            out, record = perturb(wav, self.variant_recipe, derive_seed(job.seed, "variant", variant))
        else:
            out, record = perturb(wav, self.recipe, derive_seed(job.seed, "perturb"))
        self.stats["perturb_seconds"] += time.perf_counter() - t0
        self.stats["perturb_audio_seconds"] += out.numel() / schema.SAMPLE_RATE
        for op in record["ops"]:
            self.stats["by_op"][op["op"]] += 1
        return out, record

    def _perturbed(self, job: Job) -> list[tuple[str, torch.Tensor, dict, dict]]:
        parent = self._split(job.split)[job.row]
        wav, record = self._perturb(torch.from_numpy(schema.decode_audio(parent["audio"])), job)
        generator = _provenance(job, record, engine="", voice="", source_split=job.split, copy=job.copy)
        meta = dict(
            speaker=parent["speaker"], accent=parent["accent"], origin="perturbed", parent_id=parent["id"]
        )
        return [(job.id, wav, generator, meta)]

    def _synthetic(self, job: Job) -> list[tuple[str, torch.Tensor, dict, dict]]:
        """The rendering of ``job`` (perturbed when ``job.perturb``) and its variants, or nothing
        after counting why the synthesis failed."""
        engine = tts.cached_engine(
            job.engine, self.task.engine_timeout, self.task.hf_model, self.task.language
        )
        engine_seed = derive_seed(job.seed, "tts")
        t0 = time.perf_counter()
        try:
            samples, rate = engine.synthesize(job.text, job.voice, engine_seed)
        except tts.SynthesisError as e:  # custom engines raise it too
            self._fail("synthesis_error", job, str(e)[:300])
            return []
        wav = _resample(samples, rate)
        self.stats["engine_seconds"][job.engine] += time.perf_counter() - t0
        self.stats["engine_audio_seconds"][job.engine] += wav.numel() / schema.SAMPLE_RATE
        # data_prep.candidates.tts engines raise SynthesisError for silence; a custom engine may not.
        if wav.numel() == 0 or not float(wav.abs().max()) >= tts.SILENCE_PEAK:
            self._fail("silent_synthesis", job, f"{job.engine} voice {job.voice} returned silence or NaN")
            return []
        problem = audio_problem(wav.numpy(), schema.SAMPLE_RATE, job.text)
        if problem:
            self._fail(problem[0], job, f"{job.engine} voice {job.voice} on {job.text[:60]!r}: {problem[1]}")
            return []
        clean = wav
        record = {"recipe": "", "seed": None, "ops": [], "peak_scale": 1.0}
        if job.perturb:
            wav, record = self._perturb(wav, job)
        params = _engine_params(engine, job.voice, engine_seed)
        voice = dict(engine=job.engine, voice=job.voice, engine_seed=engine_seed, engine_params=params)
        accent = _voice_accent(engine, job.voice)
        meta = dict(speaker=f"{job.engine}:{job.voice}", accent=accent, origin="synthetic", parent_id="")
        made = [(job.id, wav, _provenance(job, record, **voice), meta)]
        # Variants: the same synthesis through other acoustics. The parent is the clean rendering,
        # which the gate decodes once for all of them.
        for k in range(1, job.variants + 1):
            out, rec = self._perturb(clean, job, variant=k)
            generator = _provenance(job, rec, **voice, variant=k, rendering=job.id)
            made.append((f"{job.id}-v{k}", out, generator, {**meta, "parent_id": job.id}))
        return made

    def make(self, job: Job) -> list[dict]:
        """The candidate rows of ``job`` (one, or a rendering and its variants); a row that fails
        is counted and left out."""
        made = self._perturbed(job) if job.kind == "perturb" else self._synthetic(job)
        rows = []
        for k, (cid, wav, generator, meta) in enumerate(made):
            duration = wav.numel() / schema.SAMPLE_RATE
            if not torch.isfinite(wav).all():
                self._fail("non_finite", job, f"{cid}: NaN or infinite samples after perturbation")
            elif duration > self.task.max_duration:
                self._fail(
                    "too_long", job, f"{cid}: {duration:.1f} s > max_duration {self.task.max_duration} s"
                )
            else:
                rows.append(self._row(job, cid, wav, generator, meta))
                continue
            if k == 0 and len(made) > 1:
                # the gate judges variants by their clean rendering: without it they are not made
                self._fail("variant_of_failed_rendering", job, f"variants of {cid}", count=len(made) - 1)
                break
        return rows

    def _row(self, job: Job, cid: str, wav: torch.Tensor, generator: dict, meta: dict) -> dict:
        self.stats["candidates"] += 1
        self.stats["audio_seconds"] += wav.numel() / schema.SAMPLE_RATE
        self.stats["by_origin"][meta["origin"]] += 1
        self.stats["by_engine"][job.engine or "perturb"] += 1
        if job.kind == "tts":
            self.stats["by_voice"][meta["speaker"]] += 1
        return schema.make_row(id=cid, samples=wav.numpy(), text=job.text, generator=generator, **meta)


def _cpu_seconds() -> float:
    """CPU time of this process and the engine processes it waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_shard(task: ShardTask, wait: bool = False) -> dict[str, Any] | None:
    """Generate one shard under its lock and write it atomically; returns its report.

    When another live process holds the shard: None at once, or with ``wait`` its report once it
    is finished (or this process makes it, if that process died before finishing).
    """
    name = shard_name(task.index, task.num_shards)
    shards_dir = Path(task.shards_dir)
    with locks.output_lock(shards_dir / name, f"generate shard {task.index}", wait=wait) as held:
        if not held:
            log.info("%s is being made by %s: skipped here", name, locks.holder(shards_dir / name))
            return None
        if shard_done(shards_dir, task.index, task.num_shards, task.fingerprint):  # made meanwhile
            return files.read_json(shards_dir / name / SHARD_MARKER)
        # Only a dead process leaves a temp folder of a shard whose lock is free: a killed run.
        for stale in shards_dir.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return _make_shard(task, shards_dir / name)


@contextlib.contextmanager
def _one_thread():
    """One torch thread while a shard is made (parallelism comes from shards), then the caller's
    count again: with ``num_proc: 1`` the shards run in the stage's own process, and the gate
    that decodes after them there would otherwise run on one of the machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@_one_thread()
def _make_shard(task: ShardTask, out: Path) -> dict[str, Any]:
    t0, cpu0 = time.time(), _cpu_seconds()
    name = out.name
    worker = _ShardWorker(task)
    rows = []
    for job in tqdm(task.jobs, desc=name, unit="cand", disable=not task.progress, leave=False):
        rows += worker.make(job)
    features = schema.features()
    ds = Dataset.from_dict({c: [r[c] for r in rows] for c in features}, features=features)
    report = {
        "shard": task.index,
        "num_shards": task.num_shards,
        "fingerprint": task.fingerprint,
        "jobs": len(task.jobs),
        **{k: dict(v) if isinstance(v, Counter) else v for k, v in worker.stats.items()},
        "failure_examples": worker.failure_examples,
        "wall_seconds": time.time() - t0,
        "cpu_seconds": _cpu_seconds() - cpu0,
    }
    with files.atomic_dir(out) as tmp:
        ds.save_to_disk(str(tmp))
        files.write_json(report, tmp / SHARD_MARKER)
    return report


def run_shards(tasks: list[ShardTask], num_proc: int) -> None:
    """Run the tasks here, or in ``num_proc`` spawned single-threaded workers; then wait for the
    shards that other processes were making, and make any they left unfinished."""
    skipped = []
    if num_proc <= 1 or len(tasks) <= 1:
        for task in tqdm(tasks, desc="shards", unit="shard", disable=len(tasks) <= 1):
            if run_shard(task) is None:
                skipped.append(task)
    else:
        tasks = [dataclasses.replace(t, progress=False) for t in tasks]
        for i, report in pool.imap_unordered(run_shard, tasks, num_proc, desc="shards", unit="shard"):
            if report is None:
                skipped.append(tasks[i])
    if skipped:
        log.info("waiting for %d shard(s) that other processes are making", len(skipped))
    for task in sorted(skipped, key=lambda t: t.index):
        run_shard(task, wait=True)


def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _add(total.setdefault(k, {}), v)
        else:
            total[k] = total.get(k, 0) + v


def merge_reports(shard_reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' counts summed, their failure examples pooled, and throughput figures."""
    summed_keys = (
        "jobs candidates audio_seconds by_origin by_engine by_voice by_op failures engine_seconds "
        "engine_audio_seconds perturb_seconds perturb_audio_seconds wall_seconds cpu_seconds"
    ).split()
    total: dict[str, Any] = {}
    for rep in shard_reports:
        _add(total, {k: rep[k] for k in summed_keys})
    examples: dict[str, list[str]] = {}
    for rep in shard_reports:
        for reason, ex in rep["failure_examples"].items():
            examples.setdefault(reason, []).extend(ex[: MAX_EXAMPLES - len(examples.get(reason, []))])

    def rate(audio: float, wall: float) -> float | None:
        return round(audio / wall, 2) if wall > 0 else None

    # Each shard runs on one core, so audio seconds per shard-second is the per-core speed; on a
    # shared machine the wall figure drops with other jobs' load, the CPU figure does not.
    throughput = {
        "audio_seconds_per_wall_second_per_core": rate(total["audio_seconds"], total["wall_seconds"]),
        "audio_seconds_per_cpu_second": rate(total["audio_seconds"], total["cpu_seconds"]),
        "per_engine": {
            e: rate(total["engine_audio_seconds"][e], s)
            for e, s in sorted(total.get("engine_seconds", {}).items())
        },
        "perturb": rate(total["perturb_audio_seconds"], total["perturb_seconds"]),
    }
    return {
        **{
            k: total[k]
            for k in ("jobs", "candidates", "by_origin", "by_engine", "by_voice", "by_op", "failures")
        },
        "failure_examples": examples,
        "audio_hours": round(total["audio_seconds"] / 3600, 4),
        "shard_wall_seconds": round(total["wall_seconds"], 2),
        "shard_cpu_seconds": round(total["cpu_seconds"], 2),
        "throughput": throughput,
    }
