"""Stage `generate`: candidate utterances from TTS voices and perturbed real speech, with provenance.

    python -m data_prep.generate --config configs/demo.yaml [--key value ...] [--num_proc 8]
    accelerate launch --multi_gpu --num_processes 4 -m data_prep.generate --config ...
    torchrun --nnodes 2 --nproc_per_node 8 ... -m data_prep.generate --config ...

Under a launcher each process reads RANK/WORLD_SIZE and takes shards rank, rank+world, ...
(`accelerate launch --cpu` starts a single process; on CPU-only machines use --num_proc or
torchrun). Several machines need a shared output folder, or `--shard_index` per machine and
one last run to merge.

The filter can only accept what this stage proposes, so the proposal is broad: every voice of
every installed engine, optionally perturbed, plus perturbed copies of every real utterance.

Reads `<output_dir>/data` (prepare stage): `target_train` (texts and audio), `source` (audio),
`protected_texts.json` (the leakage guard). Writes `<output_dir>/candidates/`:
- `shards/shard-XXXXX-of-YYYYY/`: one dataset per shard with its report `shard.json` inside,
  written atomically: a shard folder exists only when it is finished.
- `dataset/`: every shard merged (canonical schema; `origin` synthetic or perturbed,
  `parent_id`, `generator` = engine, voice, seed and each perturbation with its parameters).
- `report.json` (counts per engine/voice/op, failures by reason, audio hours, throughput) and
  `config.yaml`.

Steps: 1. plan every job (texts through the leakage guard, voices, seeds) identically in every
process; 2. cut the plan into shards and run this process's unfinished shards; 3. the process
that finds every shard finished merges them. A rerun skips finished shards whose fingerprint
(their jobs, the recipe, the inputs) still matches, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import importlib
import json
import logging
import math
import os
import re
import resource
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from tqdm.auto import tqdm

from core import files, paths, pool, schema
from core.paths import ExperimentPaths
from core.seeding import derive_seed
from data_prep.candidates import tts
from data_prep.candidates.perturb import Recipe, load_recipe, perturb
from data_prep.leakage import LeakageGuard, normalize_text

log = logging.getLogger(__name__)

# Candidates per shard when num_shards is 0: small enough that a killed run loses little
# (a few minutes of work), large enough that per-shard overhead (a dataset save) is negligible.
SHARD_SIZE = 500
# Bumped when the content of a candidate for the same job changes, so old shards are redone.
FORMAT_VERSION = 1
SHARD_MARKER = "shard.json"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", s).strip("_") or "x"


@dataclasses.dataclass(frozen=True)
class Job:
    """One candidate to make: a TTS synthesis or a perturbed copy of a real utterance."""

    id: str
    kind: str  # "tts" | "perturb"
    seed: int
    text: str
    engine: str = ""
    voice: str = ""
    perturb: bool = True  # tts: also perturb the synthesis; perturb jobs always are
    split: str = ""  # perturb: split and row of the parent utterance
    row: int = -1
    copy: int = 0


# ---------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------
_ENGINES: dict[str, Any] = {}


def get_engine(name: str, timeout: float, hf_model: str = ""):
    """A registered TTS engine (``data_prep.candidates.tts``) or ``module:Class`` built with no arguments.

    The ``hf`` engine also takes the transformers TTS model to load (Hub id or folder)."""
    key = f"{name}@{timeout}@{hf_model}"
    if key not in _ENGINES:
        if ":" in name:
            module, cls = name.split(":", 1)
            _ENGINES[key] = getattr(importlib.import_module(module), cls)()
        else:
            options = {"model": hf_model} if name == "hf" and hf_model else {}
            _ENGINES[key] = tts.get_engine(name, timeout=timeout, **options)
    return _ENGINES[key]


def _voice_accent(engine, voice: str) -> str:
    # data_prep.candidates.tts engines label accents; a custom `module:Class` engine may not.
    accent = getattr(engine, "accent", None)
    return accent(voice) if callable(accent) else ""


def _engine_params(engine, voice: str, seed: int) -> dict[str, Any]:
    """The engine's own seeded draws (speaking rate, pitch, ...) for the provenance record."""
    params_for = getattr(engine, "params_for", None)
    return params_for(voice, seed) if callable(params_for) else {}


# ---------------------------------------------------------------------------------------------
# 1. Planning
# ---------------------------------------------------------------------------------------------
def read_corpus(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"text_corpus {p} not found: give a UTF-8 text file with one sentence a line, or leave it empty"
        )
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"text_corpus {p} is not valid UTF-8 ({e}); re-save it as UTF-8") from None
    return [line.strip() for line in lines if line.strip()]


def plan_texts(
    train_texts: list[str], corpus: list[str], guard: LeakageGuard
) -> tuple[list[str], dict[str, int]]:
    """Unique TTS texts (first spelling of each normalised sentence), test texts refused."""
    seen: set[str] = set()
    texts: list[str] = []
    counts = dict(train=len(train_texts), corpus=len(corpus), empty=0, duplicate=0, refused_protected=0)
    for text in [*train_texts, *corpus]:
        norm = normalize_text(text)
        if not norm:
            counts["empty"] += 1
        elif norm in seen:
            counts["duplicate"] += 1
        elif guard.is_protected(text):
            counts["refused_protected"] += 1
            seen.add(norm)
        else:
            seen.add(norm)
            texts.append(text)
    counts["allowed"] = len(texts)
    return texts, counts


def select_voices(voices: list[str], patterns: list[str], max_voices: int, seed: int) -> list[str]:
    kept = sorted(v for v in set(voices) if not patterns or any(fnmatch.fnmatchcase(v, p) for p in patterns))
    if max_voices and len(kept) > max_voices:
        rng = np.random.default_rng(seed)
        kept = sorted(kept[i] for i in rng.choice(len(kept), size=max_voices, replace=False))
    return kept


def plan_jobs(run, args, data_dir: Path) -> tuple[list[Job], dict[str, Any]]:
    """Every job of the run, in a deterministic order, and the planning report."""
    guard = LeakageGuard.from_dataset_dir(data_dir)
    splits = ["target_train"] + (["source"] if args.include_source else [])
    jobs: list[Job] = []
    plan: dict[str, Any] = {"protected_texts": len(guard), "perturb": {}, "engines": {}}

    rows_by_split = {}
    for split in splits:
        try:
            ds = schema.load_split(data_dir, split)
        except KeyError:
            if split == "source":
                continue  # the prepare stage writes `source` only when there are other speakers
            raise
        rows_by_split[split] = ds.select_columns(["id", "text"]).to_dict()

    # Perturbed copies of real utterances; their texts pass the guard too (a source speaker may
    # read a test sentence, and split_by=speaker shares texts between train and test).
    for split, cols in rows_by_split.items():
        refused = 0
        for row, (uid, text) in enumerate(zip(cols["id"], cols["text"], strict=True)):
            if guard.is_protected(text):
                refused += 1
                continue
            for k in range(args.copies_per_utterance):
                cid = f"{uid}-pert{k}"
                jobs.append(
                    Job(
                        id=cid,
                        kind="perturb",
                        seed=derive_seed(run.seed, cid),
                        text=text,
                        split=split,
                        row=row,
                        copy=k,
                    )
                )
        plan["perturb"][split] = {"utterances": len(cols["id"]), "refused_protected": refused}

    train_texts = rows_by_split["target_train"]["text"]
    corpus = read_corpus(args.text_corpus) if args.text_corpus else []
    texts, plan["texts"] = plan_texts(train_texts, corpus, guard)
    if plan["texts"]["refused_protected"] and not texts:
        log.warning(
            "every TTS text is a test text and was refused: no synthetic candidates (add a text_corpus)"
        )

    tts_jobs: list[Job] = []
    for name in args.engines:
        engine = get_engine(name, args.engine_timeout, args.hf_model)
        if not engine.available():
            log.warning("TTS engine %s is not installed: skipped (see ASSETS.md for the apt packages)", name)
            plan["engines"][name] = {"available": False, "voices": []}
            continue
        voices = select_voices(
            engine.voices(), args.voices, args.max_voices_per_engine, derive_seed(run.seed, "voices", name)
        )
        plan["engines"][name] = {"available": True, "voices": voices}
        for voice in voices:
            rng = np.random.default_rng(derive_seed(run.seed, "texts", name, voice))
            n = len(texts) if not args.texts_per_voice else min(args.texts_per_voice, len(texts))
            for i in sorted(rng.choice(len(texts), size=n, replace=False).tolist()):
                text = texts[i]
                cid = f"tts-{_slug(name)}-{_slug(voice)}-{hashlib.sha1(normalize_text(text).encode()).hexdigest()[:12]}"
                seed = derive_seed(run.seed, cid)
                coin = np.random.default_rng(derive_seed(seed, "perturb?")).random()
                use_recipe = bool(coin < args.perturb_synthetic_prob)
                tts_jobs.append(
                    Job(
                        id=cid, kind="tts", seed=seed, text=text, engine=name, voice=voice, perturb=use_recipe
                    )
                )
    if args.max_synthetic and len(tts_jobs) > args.max_synthetic:
        rng = np.random.default_rng(derive_seed(run.seed, "max_synthetic"))
        keep = set(rng.choice(len(tts_jobs), size=args.max_synthetic, replace=False).tolist())
        plan["synthetic_over_cap"] = len(tts_jobs) - len(keep)
        tts_jobs = [j for i, j in enumerate(tts_jobs) if i in keep]
    jobs.extend(tts_jobs)

    dup = [k for k, v in Counter(j.id for j in jobs).items() if v > 1]
    if dup:
        raise ValueError(
            f"candidate ids collide (e.g. {dup[:3]}): utterance ids in {data_dir} must be unique across splits"
        )
    plan["jobs"] = {"perturb": len(jobs) - len(tts_jobs), "tts": len(tts_jobs)}
    return jobs, plan


# ---------------------------------------------------------------------------------------------
# 2. Shards
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ShardTask:
    index: int
    num_shards: int
    jobs: tuple[Job, ...]
    fingerprint: str
    data_dir: str
    shards_dir: str
    recipe: str
    max_duration: float
    engine_timeout: float
    hf_model: str = ""
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


def _fingerprint(jobs, recipe: Recipe, inputs: dict[str, str], args) -> str:
    doc = {
        "version": FORMAT_VERSION,
        "jobs": [dataclasses.astuple(j) for j in jobs],
        "recipe": recipe.to_dict(),
        "inputs": inputs,
        "max_duration": args.max_duration,
    }
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


class _ShardWorker:
    """Makes the candidates of one shard; counts every outcome for the report."""

    def __init__(self, task: ShardTask):
        self.task = task
        self.recipe = load_recipe(task.recipe)
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

    def _fail(self, reason: str, job: Job, detail: str) -> None:
        self.stats["failures"][reason] += 1
        examples = self.failure_examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(f"{job.id}: {detail}")
        log.debug("candidate %s failed (%s): %s", job.id, reason, detail)

    def _perturb(self, wav: torch.Tensor, job: Job) -> tuple[torch.Tensor, dict[str, Any]]:
        t0 = time.perf_counter()
        out, record = perturb(wav, self.recipe, derive_seed(job.seed, "perturb"))
        self.stats["perturb_seconds"] += time.perf_counter() - t0
        self.stats["perturb_audio_seconds"] += out.numel() / schema.SAMPLE_RATE
        for op in record["ops"]:
            self.stats["by_op"][op["op"]] += 1
        return out, record

    def _perturbed(self, job: Job) -> tuple[torch.Tensor, dict, dict]:
        parent = self._split(job.split)[job.row]
        wav, record = self._perturb(torch.from_numpy(schema.decode_audio(parent["audio"])), job)
        generator = _provenance(job, record, engine="", voice="", source_split=job.split, copy=job.copy)
        meta = dict(
            speaker=parent["speaker"], accent=parent["accent"], origin="perturbed", parent_id=parent["id"]
        )
        return wav, generator, meta

    def _synthetic(self, job: Job) -> tuple[torch.Tensor, dict, dict] | None:
        engine = get_engine(job.engine, self.task.engine_timeout, self.task.hf_model)
        engine_seed = derive_seed(job.seed, "tts")
        t0 = time.perf_counter()
        try:
            samples, rate = engine.synthesize(job.text, job.voice, engine_seed)
        except tts.SynthesisError as e:  # custom engines raise it too
            self._fail("synthesis_error", job, str(e)[:300])
            return None
        wav = _resample(samples, rate)
        self.stats["engine_seconds"][job.engine] += time.perf_counter() - t0
        self.stats["engine_audio_seconds"][job.engine] += wav.numel() / schema.SAMPLE_RATE
        # data_prep.candidates.tts engines raise SynthesisError for silence; a custom engine may not.
        if wav.numel() == 0 or not float(wav.abs().max()) >= tts.SILENCE_PEAK:
            self._fail("silent_synthesis", job, f"{job.engine} voice {job.voice} returned silence or NaN")
            return None
        record = {"recipe": "", "seed": None, "ops": [], "peak_scale": 1.0}
        if job.perturb:
            wav, record = self._perturb(wav, job)
        params = _engine_params(engine, job.voice, engine_seed)
        generator = _provenance(
            job, record, engine=job.engine, voice=job.voice, engine_seed=engine_seed, engine_params=params
        )
        accent = _voice_accent(engine, job.voice)
        meta = dict(speaker=f"{job.engine}:{job.voice}", accent=accent, origin="synthetic", parent_id="")
        return wav, generator, meta

    def make(self, job: Job) -> dict | None:
        """The candidate row of ``job``, or None after counting why it failed."""
        made = self._perturbed(job) if job.kind == "perturb" else self._synthetic(job)
        if made is None:
            return None
        wav, generator, meta = made
        if not torch.isfinite(wav).all():
            self._fail("non_finite", job, "NaN or infinite samples after perturbation")
            return None
        duration = wav.numel() / schema.SAMPLE_RATE
        if duration > self.task.max_duration:
            self._fail("too_long", job, f"{duration:.1f} s > max_duration {self.task.max_duration} s")
            return None
        row = schema.make_row(id=job.id, samples=wav.numpy(), text=job.text, generator=generator, **meta)
        self.stats["candidates"] += 1
        self.stats["audio_seconds"] += duration
        self.stats["by_origin"][meta["origin"]] += 1
        self.stats["by_engine"][job.engine or "perturb"] += 1
        if job.kind == "tts":
            self.stats["by_voice"][meta["speaker"]] += 1
        return row


def _cpu_seconds() -> float:
    """CPU time of this process and the engine processes it waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_shard(task: ShardTask) -> dict[str, Any]:
    """Generate one shard and write it atomically; returns its report."""
    from datasets import Dataset

    torch.set_num_threads(1)  # one shard, one core: parallelism comes from shards
    t0, cpu0 = time.time(), _cpu_seconds()
    name = shard_name(task.index, task.num_shards)
    shards_dir = Path(task.shards_dir)
    for stale in shards_dir.glob(f".{name}.tmp-*"):  # left by a killed run; this process owns the shard
        shutil.rmtree(stale, ignore_errors=True)
    worker = _ShardWorker(task)
    rows = []
    for job in tqdm(task.jobs, desc=name, unit="cand", disable=not task.progress, leave=False):
        row = worker.make(job)
        if row is not None:
            rows.append(row)
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
    with files.atomic_dir(shards_dir / name) as tmp:
        ds.save_to_disk(str(tmp))
        files.write_json(report, tmp / SHARD_MARKER)
    return report


def run_shards(tasks: list[ShardTask], num_proc: int) -> None:
    if num_proc <= 1 or len(tasks) <= 1:
        for task in tqdm(tasks, desc="shards", unit="shard", disable=len(tasks) <= 1):
            run_shard(task)
        return
    tasks = [dataclasses.replace(t, progress=False) for t in tasks]
    for _ in pool.imap_unordered(run_shard, tasks, num_proc, desc="shards", unit="shard"):
        pass


# ---------------------------------------------------------------------------------------------
# 3. Merge and report
# ---------------------------------------------------------------------------------------------
def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _add(total.setdefault(k, {}), v)
        else:
            total[k] = total.get(k, 0) + v


def merge_reports(shard_reports: list[dict[str, Any]]) -> dict[str, Any]:
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
            examples.setdefault(reason, []).extend(ex[: 5 - len(examples.get(reason, []))])

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


def merge(
    out_dir: Path, num_shards: int, fingerprint: str, plan: dict[str, Any], run, args
) -> dict[str, Any] | None:
    """Merge finished shards into ``dataset/`` and write ``report.json``; once per fingerprint."""
    from datasets import concatenate_datasets, load_from_disk

    from core.config import save_resolved

    with files.file_lock(out_dir / ".merge.lock"):
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
        files.atomic_save(ds, out_dir / paths.CANDIDATES_DATASET)
        report = {
            "stage": "generate",
            "fingerprint": fingerprint,
            "num_shards": num_shards,
            "plan": plan,
            **merge_reports(reports),
        }
        save_resolved(out_dir / "config.yaml", "generate", run, args)
        files.write_json(report, report_path)
    return report


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (torchrun / accelerate launch set both)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def generate(run, args) -> dict[str, Any] | None:
    """Run the stage; returns the merged report, or None while other processes still have shards."""
    t0 = time.time()
    exp = ExperimentPaths.of(run.output_dir)
    data_dir = Path(args.data_dir or exp.data)
    out_dir = exp.candidates
    rank, world = rank_and_world()

    # 1. Plan (the same in every process: it depends only on the config and the inputs).
    jobs, plan = plan_jobs(run, args, data_dir)
    recipe = load_recipe(args.perturb_recipe)
    inputs = {}
    for split in plan["perturb"]:
        inputs[split] = schema.load_split(data_dir, split)._fingerprint

    # 2. Shards: job i goes to shard i % n, so every shard mixes engines and real speech.
    num_shards = args.num_shards or max(world, math.ceil(len(jobs) / SHARD_SIZE), 1)
    shard_jobs = [tuple(jobs[i::num_shards]) for i in range(num_shards)]
    fingerprints = [_fingerprint(sj, recipe, inputs, args) for sj in shard_jobs]
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
            max_duration=args.max_duration,
            engine_timeout=args.engine_timeout,
            hf_model=args.hf_model,
        )
        for i in todo
    ]
    run_shards(tasks, args.num_proc)

    # 3. Merge, by whichever process finds every shard finished.
    pending = [i for i in range(num_shards) if not shard_done(shards_dir, i, num_shards, fingerprints[i])]
    if pending:
        log.info(
            "generate: %d of %d shards still pending (other processes or a rerun finish them)",
            len(pending),
            num_shards,
        )
        return None
    overall = hashlib.sha256("".join(fingerprints).encode()).hexdigest()[:16]
    report = merge(out_dir, num_shards, overall, plan, run, args)
    log.info(
        "generate: %d candidates (%s), %.2f h of audio; failures %s; refused %d test text(s) for TTS, %s for "
        "perturbation -> %s (%.0f s)",
        report["candidates"],
        report["by_origin"],
        report["audio_hours"],
        report["failures"] or "none",
        plan["texts"]["refused_protected"],
        {k: v["refused_protected"] for k, v in plan["perturb"].items()},
        out_dir,
        time.time() - t0,
    )
    return report


def main(argv=None):
    from core.config import parse_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run, args = parse_args("generate", argv, description=__doc__)
    generate(run, args)


if __name__ == "__main__":
    main()
