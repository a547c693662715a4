"""recipe.train end to end on tiny models and espeak-ng speech: losses fall, resume, Hub push, DDP."""

import json
import math
import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from datasets import Dataset
from huggingface_hub import HfApi
from tiny_asr import ESPEAK, PHRASES, canonical_rows, tiny_wav2vec2, tiny_whisper, write_prepared

import recipe.train as rt
from core.asr import load_asr
from core.config import ConfigError
from recipe.packing import WindowDataset
from recipe.train import main
from recipe.trainer import weighted_sampler

REPO = Path(__file__).resolve().parents[1]
VOICES = ["en-us", "en-gb"]
# Equal-length phrases: with the byte-level test tokenizer every label has the same number of
# tokens, so the token-mean loss of a 4-utterance batch equals the mean of two 2-utterance
# halves and a 2-process run must log the single-process loss.
EQUAL_LENGTH = [
    "open the door",
    "call my phone",
    "play the song",
    "read the news",
    "lock the door",
    "pause a while",
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    if ESPEAK is None:  # every training test here needs speech
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("train")
    data = root / "prepared"
    train = canonical_rows([(t, v) for t in PHRASES[:6] for v in VOICES], "tr")
    test = canonical_rows([(t, "en-us") for t in PHRASES[6:]], "te")
    write_prepared(data, train, test)
    equal = root / "equal"
    write_prepared(equal, canonical_rows([(t, v) for t in EQUAL_LENGTH for v in VOICES], "eq"), test)
    # scored candidates as the filter stage writes them, with weights (weights mode)
    cands = canonical_rows(
        [(t, v) for t in PHRASES[:6] for v in ("en-gb-scotland", "en-029")], "cand", origin="synthetic"
    )
    for i, r in enumerate(cands):
        r.update(log_ratio=0.0, accept_prob=0.5, accepted=i % 2 == 0, fold=i % 2, weight=float(i % 3))
    Dataset.from_list(cands).save_to_disk(str(data / "filter" / "scored"))
    return SimpleNamespace(
        root=root,
        data=data,
        equal=equal,
        whisper=tiny_whisper(root / "whisper"),
        ctc=tiny_wav2vec2(root / "w2v2"),
    )


def train_section(assets, **train) -> dict:
    """A fast `train` section: the tiny Whisper on the real split, no evaluation, no saving."""
    return {
        "model_name_or_path": str(assets.whisper),
        "data_dir": str(assets.data / "data"),
        "use_candidates": "none",
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "eval_strategy": "no",
        "load_best_model_at_end": False,
        "save_strategy": "no",
        "report_to": [],
        "final_eval_splits": [],
        "generation_max_length": 16,
        "bootstrap_samples": 20,
        **train,
    }


def run_train(tmp_path: Path, assets, **train) -> Path:
    """main() with a YAML config; returns <output_dir>/train."""
    section = train_section(assets, **train)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump({"run": {"output_dir": str(tmp_path / "exp"), "seed": 0}, "train": section})
    )
    main(["--config", str(cfg)])
    return tmp_path / "exp" / "train"


def losses(train_dir: Path) -> dict[int, float]:
    state = json.loads((train_dir / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


# ---------------------------------------------------------------------------------------------
# The trainer's weighted sampler (recipe.trainer)
# ---------------------------------------------------------------------------------------------
def test_weighted_sampler_draws_in_proportion_to_weights():
    w = np.array([0.0, 1.0, 2.0, 5.0]) * 2500
    draws = np.array(list(weighted_sampler(w, seed=3)))
    assert len(draws) == w.sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), w / w.sum(), atol=0.01)
    assert np.array_equal(draws, np.array(list(weighted_sampler(w, seed=3))))  # every process draws the same


# ---------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------
def test_whisper_loss_decreases_with_packing(tmp_path, assets):
    out = run_train(
        tmp_path,
        assets,
        max_steps=10,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        pack_max_seconds=6.0,
        unpacked_share=0.25,
        eval_strategy="steps",
        eval_steps=5,
        save_strategy="steps",
        save_steps=5,
        load_best_model_at_end=True,
        final_eval_splits=["target_test"],
    )
    loss = losses(out)
    assert loss[10] < 0.8 * loss[1], loss  # measured: 5.88 -> 3.54
    report = json.loads((out / "train_report.json").read_text())
    ex = report["examples"]
    # 3 of the 12 draws stay alone; the other 9 share windows
    assert (
        ex["packing"] and ex["unpacked_utterances"] == 3 and ex["windows"] < 3 + 9 and ex["utterances"] == 12
    )
    assert report["composition"]["real"]["utterances"] == 12
    for ckpt in ("checkpoint-5", "checkpoint-10"):
        assert (out / ckpt / "config.yaml").is_file() and (out / ckpt / "processor_config.json").is_file()
    card = (out / "README.md").read_text()
    assert "model-index" in card and "target_test" in card and "python -m recipe.train --config" in card
    assert (out.parent / "eval" / "train-target_test" / "results.json").is_file()


def test_packed_windows_are_redrawn_every_epoch(tmp_path, assets, monkeypatch):
    seen = []  # the transcript of every training example the Trainer asks for, in order
    getitem = WindowDataset.__getitem__

    def record(self, key):
        example = getitem(self, key)
        seen.append(example["text"])
        return example

    monkeypatch.setattr(WindowDataset, "__getitem__", record)
    out = run_train(tmp_path, assets, num_train_epochs=3, packing="on", pack_max_seconds=6.0)
    report = json.loads((out / "train_report.json").read_text())
    n = report["examples"]["windows"]
    # Every epoch is the first packing's number of windows, so the step count is the usual one.
    assert len(seen) == 3 * n and report["global_step"] == 3 * math.ceil(n / 2)
    epochs = [sorted(seen[k * n : (k + 1) * n]) for k in range(3)]
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]


def test_ctc_loss_decreases_with_weighted_candidates(tmp_path, assets):
    out = run_train(
        tmp_path,
        assets,
        model_name_or_path=str(assets.ctc),
        filter_dir=str(assets.data / "filter"),
        use_candidates="weighted",
        max_steps=12,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        per_device_train_batch_size=4,
    )
    loss = losses(out)
    # measured: 4.9 -> 3.0 (a tiny CTC model first learns to emit blanks)
    assert np.mean([loss[s] for s in (10, 11, 12)]) < 0.8 * np.mean([loss[s] for s in (1, 2, 3)]), loss
    report = json.loads((out / "train_report.json").read_text())
    assert report["sampling"] == "weighted" and report["composition"]["candidates"]["by_generator"] == {
        "espeak-ng": 12
    }
    vocab = json.loads((out / "vocab.json").read_text())
    assert set(vocab) - {"[PAD]", "[UNK]", "|"} == set("".join(PHRASES[:6]).replace(" ", ""))


def test_ctc_lora_checkpoints_and_merged_final_model(tmp_path, assets):
    out = run_train(
        tmp_path,
        assets,
        model_name_or_path=str(assets.ctc),
        lora=True,
        lora_r=4,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
    )
    assert (out / "checkpoint-2" / "adapter_config.json").is_file()  # checkpoints hold the adapters
    assert not (out / "adapter_config.json").exists()  # the final model is merged and plain
    asr = load_asr(str(out), device="cpu")
    assert asr.kind == "ctc" and asr.model.config.vocab_size == len(
        json.loads((out / "vocab.json").read_text())
    )


# Packed into 4-s windows: 6 windows, 3 steps per epoch, so step 4 resumes inside the second
# epoch, whose windows the resumed run must pack exactly as the uninterrupted one did.
@pytest.mark.parametrize("packing", ["off", "on"])
def test_resume_continues_from_the_saved_step(tmp_path, assets, monkeypatch, packing):
    common = dict(
        max_steps=6,
        packing=packing,
        pack_max_seconds=4.0,
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=2,
    )
    straight = losses(run_train(tmp_path / "straight", assets, **common))

    # the same run, interrupted after step 4 (its checkpoint-4 saved), then started again
    save_config = rt.save_config_callback

    def stop_after_step_4(write_config):
        class StopAt4(type(save_config(write_config))):
            def on_step_end(self, args, state, control, **kwargs):
                control.should_training_stop = state.global_step == 4

        return StopAt4()

    monkeypatch.setattr(rt, "save_config_callback", stop_after_step_4)
    first = run_train(tmp_path / "resumed", assets, **common)
    assert json.loads((first / "train_report.json").read_text())["global_step"] == 4
    monkeypatch.setattr(rt, "save_config_callback", save_config)
    out = run_train(tmp_path / "resumed", assets, **common)
    report = json.loads((out / "train_report.json").read_text())
    assert report["resumed_from"].endswith("checkpoint-4") and report["global_step"] == 6
    resumed = losses(out)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (5, 6):  # the continuation is the uninterrupted run's steps, not a restart
        assert resumed[step] == pytest.approx(straight[step], rel=1e-3)


def test_push_creates_one_repo_uploads_checkpoints_and_card_without_the_token(
    tmp_path, assets, monkeypatch, caplog, capfd
):
    secret = "hf_TESTSECRETtokenvalue0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    repos, uploads = [], []

    def create_repo(self, repo_id, **kw):
        repos.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, run_as_future=False, **kw):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        readme = Path(folder_path) / "README.md"
        uploads.append(
            {
                "repo": repo_id,
                "path_in_repo": path_in_repo,
                "files": files,
                "card": readme.read_text() if readme.is_file() else "",
            }
        )
        if run_as_future:
            done = Future()
            done.set_result(None)
            return done
        return SimpleNamespace(commit_url="https://example.invalid/commit")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    run_train(
        tmp_path,
        assets,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        push_to_hub=True,
        hub_model_id="me/tiny-asr",
        final_eval_splits=["target_test"],
    )
    assert repos == ["me/tiny-asr"]
    assert all(u["repo"] == "me/tiny-asr" for u in uploads)
    assert any(u["path_in_repo"] == "last-checkpoint" for u in uploads)  # checkpoints go up while training
    final = uploads[-1]
    assert final["path_in_repo"] is None and "model.safetensors" in final["files"]
    assert (
        "model-index" in final["card"]
        and "name: me/tiny-asr" in final["card"]
        and "type: wer" in final["card"]
    )
    for path in (tmp_path / "exp").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert secret not in captured.out + captured.err + caplog.text


def test_hub_token_in_the_config_is_refused(tmp_path, assets):
    with pytest.raises(ConfigError, match="HF_TOKEN"):
        run_train(tmp_path, assets, max_steps=1, hub_token="hf_xyz")


@pytest.mark.slow
def test_two_processes_log_the_single_process_loss(tmp_path, assets):
    """DDP over 2 CPU processes (gloo) with per-device batch 2 vs one process with batch 4."""
    section = train_section(
        assets, data_dir=str(assets.equal / "data"), packing="off", max_steps=3, use_cpu=True
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"seed": 0}, "train": section}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    single = tmp_path / "single"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.train",
            "--config",
            str(cfg),
            "--output_dir",
            str(single),
            "--per_device_train_batch_size",
            "4",
        ],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    ddp = tmp_path / "ddp"
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "29517",
            "-m",
            "recipe.train",
            "--config",
            str(cfg),
            "--output_dir",
            str(ddp),
            "--per_device_train_batch_size",
            "2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((ddp / "train" / "train_report.json").read_text())
    assert report["world_size"] == 2
    one, two = losses(single / "train"), losses(ddp / "train")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-3), (one, two)
