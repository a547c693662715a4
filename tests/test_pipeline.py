"""run_finetune.sh end to end on a tiny config: stages, markers, reruns, SIGKILL + resume.

Real espeak-ng speech, a tiny Whisper built from a config; every stage runs as a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, write_wav
from tiny_asr import ESPEAK, PHRASES, speak, tiny_whisper

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ESPEAK is None, reason="espeak-ng not installed")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    src = root / "target"
    lines = []
    for i, text in enumerate(PHRASES):
        write_wav(src / f"utt{i:02d}.wav", speak(text, "en-gb-scotland+m3"))
        lines.append(f"utt{i:02d}.wav,{text},scot\n")
    (src / "metadata.csv").write_text("file_name,text,speaker\n" + "".join(lines))
    model = tiny_whisper(root / "tiny-whisper")
    return root, src, model


def write_config(root: Path, src: Path, model: Path, name: str) -> Path:
    cfg = {
        "run": {"output_dir": str(root / name), "seed": 0},
        "prepare": {"source": "audiofolder", "path": str(src), "split_by": "text", "test_fraction": 0.3},
        "generate": {
            "engines": ["espeak-ng"],
            "voices": ["en-us+*", "en-gb-scotland+*"],
            "max_voices_per_engine": 4,
            "texts_per_voice": 3,
            "copies_per_utterance": 1,
            "num_shards": 4,  # several shards, so a kill leaves some finished and some not
        },
        # budget:6: with 12 candidates and `max` the filter may accept none, and candidates should reach training
        "filter": {
            "embedder": "mfcc_stats",
            "method": "classifier",
            "folds": 2,
            "heldout_fraction": 0.25,
            "policy": "budget:6",
        },
        "train": {
            "model_name_or_path": str(model),
            "packing": "on",
            "max_steps": 8,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "eval_strategy": "no",
            "save_strategy": "steps",
            "save_steps": 2,
            "load_best_model_at_end": False,
            "logging_steps": 1,
            "report_to": [],
            "final_eval_splits": ["target_test"],
        },
        "evaluate": {"model": str(model), "batch_size": 8},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "run_finetune.sh"), "--config", str(config), "--stop_stage", "5", *extra],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def final(exp: Path) -> tuple[dict, list[str]]:
    res = json.loads((exp / "eval" / "train-target_test" / "results.json").read_text())
    hyps = [
        json.loads(line)["hyp"]
        for line in (exp / "eval" / "train-target_test" / "hyps.jsonl").read_text().splitlines()
    ]
    return res["overall"], hyps


@pytest.fixture(scope="module")
def reference(setup):
    root, src, model = setup
    cfg = write_config(root, src, model, "reference")
    out = run(cfg)
    assert out.returncode == 0, out.stderr[-4000:]
    return cfg, out


def test_full_run_prints_results_and_leaves_markers(reference):
    cfg, out = reference
    exp = Path(yaml.safe_load(cfg.read_text())["run"]["output_dir"])
    for n in range(1, 6):
        assert (exp / ".stages" / f"{n}.done").is_file()
    assert "WER" in out.stderr and "paired bootstrap" in out.stderr
    paired = json.loads((exp / "eval" / "train-target_test" / "paired.json").read_text())
    assert (
        paired["n_utterances"]
        == json.loads((exp / "data" / "report.json").read_text())["kept"]["target_test"]
    )
    assert (exp / "train" / "README.md").is_file() and list((exp / "filter" / "figures").glob("*.png"))


def test_rerun_skips_and_a_changed_config_redoes_from_that_stage(reference):
    cfg, _ = reference
    exp = Path(yaml.safe_load(cfg.read_text())["run"]["output_dir"])
    before = {n: (exp / ".stages" / f"{n}.done").read_text() for n in range(1, 6)}
    out = run(cfg)
    assert out.returncode == 0
    assert all(
        f"stage {n} {name}: done, skipped" in out.stderr
        for n, name in [(1, "prepare"), (2, "generate"), (4, "train")]
    )
    out = run(cfg, "train.max_steps=6")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "stage 1 prepare: done, skipped" in out.stderr and "stage 3 filter: done, skipped" in out.stderr
    assert "stage 4: fine-tune" in out.stderr and "stage 5: evaluate" in out.stderr
    after = {n: (exp / ".stages" / f"{n}.done").read_text() for n in range(1, 6)}
    assert [before[n] == after[n] for n in range(1, 6)] == [True, True, True, False, False]
    run(cfg)  # back to the reference config for the other tests (redoes train and evaluate)


@pytest.mark.parametrize(
    "stage, started",
    [
        ("generate", lambda exp: len(list((exp / "candidates" / "shards").glob("shard-*"))) >= 1),
        ("filter", lambda exp: (exp / "embeddings").is_dir()),
        ("train", lambda exp: len(list((exp / "train").glob("checkpoint-*"))) >= 1),
    ],
)
def test_sigkill_during_a_stage_then_rerun_gives_the_same_results(setup, reference, stage, started):
    root, src, model = setup
    ref_cfg, _ = reference
    ref_exp = Path(yaml.safe_load(ref_cfg.read_text())["run"]["output_dir"])
    cfg = write_config(root, src, model, f"kill-{stage}")
    exp = Path(yaml.safe_load(cfg.read_text())["run"]["output_dir"])
    shutil.rmtree(exp, ignore_errors=True)
    proc = subprocess.Popen(
        [str(REPO / "run_finetune.sh"), "--config", str(cfg), "--stop_stage", "5"],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while not started(exp) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, f"the run finished before {stage} could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (exp / ".stages" / "5.done").exists()
    out = run(cfg)
    assert out.returncode == 0, out.stderr[-4000:]
    (wer, hyps), (ref_wer, ref_hyps) = final(exp), final(ref_exp)
    assert hyps == ref_hyps
    assert wer["wer"] == pytest.approx(ref_wer["wer"])
