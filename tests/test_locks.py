"""Concurrent runs on one experiment folder: generate's shards split between processes, the
embedding cache computed once, and every stage waiting for a run of itself on the same folder."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tone
from test_generate import prepared, run_generate

from core import files, schema
from core.config import parse_args
from core.locks import holder, lock_path, output_lock
from data_prep.candidates.shards import shard_name

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}


class Messages(logging.Handler):
    """The messages of ``core.locks`` (train's main replaces the root handlers, so caplog may miss them)."""

    def __enter__(self):
        self.lines: list[str] = []
        self.logger = logging.getLogger("core.locks")
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)

    def emit(self, record):
        self.lines.append(record.getMessage())

    def wait_for(self, text: str, thread: threading.Thread, timeout: float = 60) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and thread.is_alive():
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.02)
        return any(text in line for line in self.lines)


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def start_together(worker: str, root: Path, names=("a", "b")) -> list[subprocess.Popen]:
    """Start ``worker`` (Python source taking root and a name) once per name."""
    return [
        subprocess.Popen(
            [sys.executable, "-c", worker, str(root), name],
            env=ENV,
            cwd=TESTS,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    ]


# Waits until every process of the trial is ready, so their runs overlap: the imports take
# seconds, a run of the tiny plan a fraction of one.
BARRIER = """
def barrier(folder, me, n=2):
    (folder / f"ready-{me}").touch()
    while len(list(folder.glob("ready-*"))) < n:
        time.sleep(0.001)
"""


# ---------------------------------------------------------------------------------------------
# generate: shards split between processes
# ---------------------------------------------------------------------------------------------
GENERATE_ARGS = ["--num_shards", "3", "--copies_per_utterance", "1"]
# A shard's temp folder lives while its dataset is saved: a few ms here, seconds on real data.
# Saving a shard is slowed to real proportions and the second process starts half a save later,
# so that each trial meets what one real run in four met by chance: a process starting a shard
# while the other is writing it.
SAVE_SECONDS = 0.6
GENERATE_WORKER = (
    "import sys, time, traceback\nfrom pathlib import Path\nimport datasets\nimport test_generate\n"
    + BARRIER
    + f"""
save = datasets.Dataset.save_to_disk

def slow_save(self, path, *args, **kwargs):
    save(self, path, *args, **kwargs)
    if ".shard-" in str(path):
        time.sleep({SAVE_SECONDS})

datasets.Dataset.save_to_disk = slow_save
root, me = Path(sys.argv[1]), sys.argv[2]
for trial in sorted(p for p in root.iterdir() if p.name.startswith("trial")):
    barrier(trial, me)
    time.sleep({SAVE_SECONDS / 2} if me == "b" else 0)
    try:
        test_generate.run_generate(trial / "exp", trial / "corpus.txt", *{GENERATE_ARGS!r})
        outcome = "ok"
    except BaseException:
        outcome = traceback.format_exc()
    (trial / f"outcome-{{me}}").write_text(outcome)
"""
)


def output_files(exp: Path) -> dict[str, bytes]:
    """The merged candidates and copies, file by file (report.json holds timings, so it differs)."""
    out = {}
    for part in ("dataset", "real_augmented"):
        folder = exp / "candidates" / part
        out |= {str(p.relative_to(exp)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return out


TRIALS = 3


@pytest.mark.slow  # two processes, started in step
def test_two_generate_runs_on_one_folder_split_the_shards_and_match_one_run(tmp_path):
    """The issue's crash (one trial in four): each process deleted every shard's temp folders,
    the other's live one included, and both wrote the same shards at once."""
    reference, corpus = prepared(tmp_path / "reference")
    for k in range(TRIALS):
        trial = tmp_path / "runs" / f"trial{k}"
        trial.mkdir(parents=True)
        shutil.copytree(reference / "data", trial / "exp" / "data")
        shutil.copy(corpus, trial / "corpus.txt")
    run_generate(reference, corpus, *GENERATE_ARGS)
    expected = output_files(reference)
    assert expected

    procs = start_together(GENERATE_WORKER, tmp_path / "runs")
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    failed = {}
    for k in range(TRIALS):
        trial = tmp_path / "runs" / f"trial{k}"
        for me in "ab":
            outcome = (trial / f"outcome-{me}").read_text()
            if outcome != "ok":
                failed[f"trial {k} process {me}"] = outcome[-1500:]
    assert not failed, f"{len(failed)} of {2 * TRIALS} runs failed: {failed}"
    for k in range(TRIALS):
        exp = tmp_path / "runs" / f"trial{k}" / "exp"
        assert output_files(exp) == expected, f"trial {k} differs from one process's run"
        n = int(GENERATE_ARGS[1])
        reports = [
            files.read_json(exp / "candidates" / "shards" / shard_name(i, n) / "shard.json") for i in range(n)
        ]
        assert [r["shard"] for r in reports] == list(range(n))
        assert not list((exp / "candidates" / "shards").glob(".*tmp-*"))


def test_a_live_shard_is_skipped_and_waited_for_and_a_dead_ones_temp_folder_removed(tmp_path):
    exp, corpus = prepared(tmp_path)
    shards = exp / "candidates" / "shards"
    live = shards / f".{shard_name(1, 3)}.tmp-live"  # being written by the process holding shard 1
    dead = shards / f".{shard_name(2, 3)}.tmp-dead"  # left by a killed run: nobody holds shard 2
    live.mkdir(parents=True)
    dead.mkdir()
    with Messages() as messages, output_lock(shards / shard_name(1, 3), "generate shard 1"):
        thread, outcome = in_thread(run_generate, exp, corpus, "--num_shards", "3")
        waiting = f"waiting for generate shard 1 of pid {os.getpid()} on {shards / shard_name(1, 3)}"
        assert messages.wait_for(waiting, thread), (messages.lines, outcome)
        assert thread.is_alive() and live.is_dir() and not dead.exists()
        assert (shards / shard_name(0, 3) / "shard.json").is_file()
        assert (shards / shard_name(2, 3) / "shard.json").is_file()
        assert not (shards / shard_name(1, 3)).exists()
    # The holder let go without finishing (as a killed process would): the waiter makes shard 1.
    thread.join(60)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["value"]["num_shards"] == 3 and not live.exists()
    assert (exp / "candidates" / "dataset").is_dir()


def test_a_lock_dies_with_its_holder(tmp_path):
    target = tmp_path / "out"
    code = (
        "import sys, time\nfrom core.locks import output_lock\n"
        "with output_lock(sys.argv[1], 'prepare'):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with output_lock(target, "prepare", wait=False) as held:
            assert not held
        assert holder(target) == f"prepare of pid {proc.pid}"
    finally:
        proc.kill()
        proc.wait()
    with output_lock(target, "prepare", wait=False) as held:
        assert held and holder(target) == f"prepare of pid {os.getpid()}"
    assert holder(target) == "another process" and lock_path(target).is_file()


# ---------------------------------------------------------------------------------------------
# The embedding cache: computed once
# ---------------------------------------------------------------------------------------------
EMBED_WORKER = (
    "import sys, time\nfrom pathlib import Path\nimport numpy as np\nfrom datasets import load_from_disk\n"
    "from data_prep.filter.embed import cache, get_embedder\n"
    + BARRIER
    + """
root, me = Path(sys.argv[1]), sys.argv[2]
compute = cache._compute

def slow_compute(*args, **kwargs):
    with open(root / "computed", "a") as f:
        f.write(me + "\\n")
    time.sleep(1.0)  # the other process arrives while this one computes
    return compute(*args, **kwargs)

cache._compute = slow_compute
ds = load_from_disk(str(root / "ds"))
barrier(root, me)
np.save(root / f"out-{me}.npy", cache.embed_dataset(ds, get_embedder("mfcc_stats"), root / "cache"))
"""
)


@pytest.mark.slow  # two processes, started in step
def test_two_filter_runs_embedding_the_same_data_compute_it_once(tmp_path):
    from datasets import Dataset

    rows = [
        schema.make_row(id=f"u{i}", samples=tone(0.5 + 0.1 * i, freq=120 + 20 * i, seed=i), text="x")
        for i in range(6)
    ]
    Dataset.from_list(rows, features=schema.features()).save_to_disk(str(tmp_path / "ds"))
    procs = start_together(EMBED_WORKER, tmp_path)
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert len((tmp_path / "computed").read_text().split()) == 1, "both processes computed the embeddings"
    (cached,) = (tmp_path / "cache").glob("*/*.npy")
    a, b = np.load(tmp_path / "out-a.npy"), np.load(tmp_path / "out-b.npy")
    assert a.shape == (6, a.shape[1]) and np.array_equal(a, b) and np.array_equal(a, np.load(cached))
    assert any("waiting for embeddings" in log for log in logs), logs


# ---------------------------------------------------------------------------------------------
# Every stage: a second run on the same folder waits for the first
# ---------------------------------------------------------------------------------------------
def _prepare(tmp):
    from data_prep.prepare import prepare

    run, args = parse_args("prepare", ["--output_dir", str(tmp / "exp"), "--source", "audiofolder",
                                       "--path", str(tmp / "missing")])  # fmt: skip
    return lambda: prepare(run, args), tmp / "exp" / "data"


def _filter(tmp):
    from data_prep.filter.stage import run_filter

    run, *args = parse_args("filter", ["--output_dir", str(tmp / "exp"), "--data_dir", str(tmp / "missing")])
    return lambda: run_filter(run, *args), tmp / "exp" / "filter"


def _evaluate(tmp):
    from recipe.evaluate import evaluate

    run, args = parse_args("evaluate", ["--output_dir", str(tmp / "exp"), "--model", str(tmp / "no-model"),
                                        "--dataset", str(tmp / "missing"), "--eval_name", "zs"])  # fmt: skip
    return lambda: evaluate(run, args), tmp / "exp" / "eval" / "zs"


def _train(tmp):
    from recipe.train import main

    argv = ["--output_dir", str(tmp / "exp"), "--data_dir", str(tmp / "missing"),
            "--model_name_or_path", str(tmp / "no-model"), "--report_to", "none"]  # fmt: skip
    return lambda: main(argv), tmp / "exp" / "train"


STAGES = {"prepare": _prepare, "filter": _filter, "evaluate": _evaluate, "train": _train}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_second_run_of_a_stage_on_one_folder_waits_for_the_first(tmp_path, stage):
    call, folder = STAGES[stage](tmp_path)
    with Messages() as messages, output_lock(folder, stage):
        thread, outcome = in_thread(call)
        waiting = f"waiting for {stage} of pid {os.getpid()} on {folder}"
        assert messages.wait_for(waiting, thread), (messages.lines, outcome)
        time.sleep(0.2)
        assert thread.is_alive()
    thread.join(60)
    # Past the lock, the run goes on: here it fails on its missing input, as it would alone.
    assert not thread.is_alive() and "error" in outcome


def test_two_ablations_share_a_run_instead_of_training_it_twice(tmp_path):
    from recipe import ablation

    out, count = tmp_path / "arm" / "seed0", tmp_path / "runs"
    result = out / "hyps.jsonl"
    code = (
        "import os, sys, time; time.sleep(0.5); open(sys.argv[2], 'a').write('x'); "
        "os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True); open(sys.argv[1], 'w').write('{}')"
    )
    cmd = [sys.executable, "-c", code, str(result), str(count)]
    with Messages() as messages:
        first, a = in_thread(ablation._run_once, cmd, out, result, "real_only seed 0", [])
        second, b = in_thread(ablation._run_once, cmd, out, result, "real_only seed 0", [])
        first.join(30)
        second.join(30)
    assert "error" not in a and "error" not in b, (a, b)
    assert count.read_text() == "x", "the run was made twice"
    assert any("waiting for ablation run real_only seed 0 of pid" in line for line in messages.lines)
