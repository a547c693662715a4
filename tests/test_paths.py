"""core.paths: the one spelling of every stage output, shared by the stages and run_finetune.sh."""

import subprocess
import sys
from pathlib import Path

import yaml

from core import paths
from core.paths import ExperimentPaths

ROOT = Path(__file__).resolve().parents[1]


def test_final_eval_follows_the_train_folder():
    exp = ExperimentPaths.of("exp/x")
    assert exp.final_eval("target_test") == Path("exp/x/eval/train-target_test")
    moved = ExperimentPaths.of("exp/x", train_dir="/models/run7")
    assert moved.train == Path("/models/run7")
    assert moved.final_eval("target_dev") == Path("exp/x/eval/run7-target_dev")


def test_default_eval_name_is_a_safe_folder_name():
    assert paths.default_eval_name("openai/whisper small/", "target_test") == "whisper_small-target_test"


def test_the_shell_gets_the_same_paths_as_the_stages(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"output_dir": str(tmp_path / "e")}, "train": {"output_dir": ""}}))

    def ask(*argv):
        cmd = [sys.executable, "-m", "core.paths", "--config", str(cfg), *argv]
        return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()

    exp = ExperimentPaths.of(tmp_path / "e")
    assert ask("final_eval:target_test") == str(exp.final_eval("target_test"))
    assert ask("eval:zero_shot") == str(exp.eval(paths.ZERO_SHOT_EVAL))
    assert ask("stages") == str(exp.stages)
    assert ask("--output_dir", "/elsewhere", "filter") == "/elsewhere/filter"
    bad = subprocess.run(
        [sys.executable, "-m", "core.paths", "nope"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "unknown path 'nope'" in bad.stderr
