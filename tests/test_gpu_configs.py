"""The GPU configs, every stage, on CPU: a local dataset with EdAcc's Hub schema, tiny models.

Only what needs a GPU or the Hub is swapped (the checkpoints for tiny ones built from configs, the
dataset path, sizes); every other key comes from the config file, so an unknown key, a stage that
breaks on EdAcc's columns or splits, or a setting that does not fit the model fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, edacc_features
from datasets import Dataset
from test_tts_models import tiny_vits
from tiny_asr import ESPEAK, speak, tiny_wav2vec2, tiny_whisper

from core import schema
from data_prep.candidates.generate import main as generate
from data_prep.filter.stage import main as filter_
from data_prep.prepare import main as prepare
from recipe.evaluate import main as evaluate
from recipe.train import main as train

pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng not installed")

EDACC = edacc_features()
INDIAN = ("Indian English", "indian english", "male", "Hindi")
SCOTTISH = ("Scottish English", "scottish", "female", "English")
# (speaker, (accent, raw_accent, gender, l1), espeak voice, texts)
SPLITS = {
    "validation": [
        ("EDACC-C01-A", INDIAN, "en+m1", ["open the door", "call my office", "hello world"]),
        ("EDACC-C02-A", INDIAN, "en+m3", ["turn the lights off", "play some music", "good morning"]),
        ("EDACC-C03-B", INDIAN, "en+f2", ["press the pound key", "goodbye"]),
        (
            "EDACC-C04-A",
            SCOTTISH,
            "en-gb-scotland",
            ["close the window", "what time is it", "see you soon"],
        ),  # a test text
    ],
    "test": [
        ("EDACC-C05-A", INDIAN, "en+m2", ["see you soon", "read me the news"]),
        ("EDACC-C06-B", SCOTTISH, "en-gb-scotland+f3", ["where is the station"]),
    ],
}


@pytest.fixture(scope="module")
def edacc(tmp_path_factory) -> Path:
    """`<root>/data/{validation,test}-00000-of-00001.parquet`, the layout `load_dataset` reads as splits."""
    root = tmp_path_factory.mktemp("edacc")
    (root / "data").mkdir()
    for split, speakers in SPLITS.items():
        rows = {k: [] for k in EDACC}
        for speaker, (accent, raw, gender, l1), voice, texts in speakers:
            for i, text in enumerate(texts):
                for key, value in zip(
                    list(EDACC)[:-1], (speaker, text, accent, raw, gender, l1), strict=True
                ):
                    rows[key].append(value)
                samples = speak(text, voice)
                rows["audio"].append(
                    {"path": f"{speaker}-{i}.wav", "array": samples, "sampling_rate": 16_000}
                )
        Dataset.from_dict(rows, features=EDACC).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "whisper": str(tiny_whisper(root / "whisper", multilingual=True)),
        "wav2vec2": str(tiny_wav2vec2(root / "wav2vec2")),
        "vits": tiny_vits(root / "vits", upsample_rates=(8, 8, 4)),
    }


def run_chain(config: Path, out: Path, model: str, vits: str, edacc: Path) -> None:
    """prepare -> generate -> filter -> train -> evaluate, as run_finetune.sh runs them (its
    stage 5 decodes zero-shot, then compares the fine-tuned model to it)."""
    common = ["--config", str(config), "--output_dir", str(out)]
    prepare([*common, "--path", str(edacc), "--dev_utterances", "1"])
    generate(
        [*common, "--hf_model", vits, "--max_voices_per_engine", "2", "--texts_per_voice", "2",
         "--copies_per_utterance", "1", "--num_proc", "1", "--gate_model", model, "--gate_max_cer", "1000"]
    )  # fmt: skip
    filter_([*common, "--policy", "budget:4"])  # the configs' budget is sized for EdAcc's real pool
    train(
        [*common, "--model_name_or_path", model, "--max_steps", "2", "--per_device_train_batch_size", "2",
         "--eval_steps", "1", "--save_steps", "1", "--bf16", "false", "--fp16", "false", "--report_to", "none"]
    )  # fmt: skip
    evaluate([*common, "--model", model, "--eval_name", "zero_shot"])
    evaluate(
        [*common, "--model", str(out / "train"), "--eval_name", "train-target_test",
         "--compare_to", str(out / "eval" / "zero_shot" / "hyps.jsonl")]
    )  # fmt: skip


@pytest.mark.parametrize(
    "name, family", [("whisper-small-edacc-gpu", "whisper"), ("wav2vec2-base-edacc-gpu", "wav2vec2")]
)
def test_gpu_config_runs_every_stage_on_edacc_shaped_data(tmp_path, edacc, tiny, name, family):
    out = tmp_path / "exp"
    run_chain(REPO / "configs" / f"{name}.yaml", out, tiny[family], tiny["vits"], edacc)

    report = json.loads((out / "data" / "report.json").read_text())
    # EdAcc's test split is the evaluation set: its Indian English rows, whole; never re-split
    assert report["kept"]["target_test"] == 2 and report["test_fraction"].startswith("ignored")
    assert report["dropped"]["non_target_held_out"] == 1
    assert report["dropped"]["refused_protected_text"] == 1  # a source row saying a test text
    assert report["kept"]["source"] == 2 and report["speakers"]["source"] == ["EDACC-C04-A"]
    assert len(report["speakers"]["target_dev"]) == 1
    test = schema.load_split(out / "data", "target_test")
    assert set(test["accent"]) == {"Indian English"} and set(test["speaker"]) == {"EDACC-C05-A"}
    candidates = json.loads((out / "candidates" / "report.json").read_text())
    engines = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())["generate"]["engines"]
    # every configured engine made candidates that passed generate's checks and the gate
    assert set(engines) <= set(candidates["by_engine"]), candidates["failure_examples"]
    assert json.loads((out / "filter" / "filter_report.json").read_text())["embedder"] == "speaker"
    state = json.loads((out / "train" / "trainer_state.json").read_text())
    assert any("eval_wer" in h for h in state["log_history"])  # checkpoints judged on target_dev
    paired = json.loads((out / "eval" / "train-target_test" / "paired.json").read_text())
    assert paired["n_utterances"] == 2
