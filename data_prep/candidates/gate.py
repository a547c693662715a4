"""The intelligibility gate of the generate stage: a candidate must say its transcript.

A TTS voice can read an unsupported script as letter names, fall back to another language,
whisper at -50 dBFS or drop a word, and its label still says the sentence: trained on, such a
candidate teaches the model to hear what was not said. So the base ASR checkpoint decodes every
candidate of the gated origins and one whose character error rate against its label (both
normalized as evaluation does) is above ``gate_max_cer`` is rejected, the way distil-whisper drops
pseudo-labels above a WER threshold.

Cost: Whisper pads every input to a 30-s window, so short candidates are decoded packed, many
to a window (``core.asr.packed``); packing can misplace a word between neighbours, so every
candidate over the threshold is decoded again alone before it is rejected: a rejection always
rests on a decoding of that candidate by itself.

Decisions are cached per shard (``candidates/gate/<key>/shard-*.json``, key = weights, language,
packing, threshold), so a rerun decodes only new shards; the merge drops the rejected rows and
reports them per engine and voice, with every rejected candidate listed in ``gate/rejected.jsonl``.
Under a launcher each process gates the shards it made, on its own GPU (cuda:LOCAL_RANK); the
process that finds every shard made then gates what no process has decided yet and waits for the
shards the others are still deciding, each shard's decisions made under its lock, once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import load_from_disk
from tqdm.auto import tqdm

from core import files, locks, schema
from core.asr import load_asr
from core.asr.errors import error_counts
from core.asr.normalize import get_normalizer
from core.checkpoint import model_fingerprint, resolve_model

log = logging.getLogger(__name__)

# Bumped when the decoding or the CER of the same candidate changes, so cached decisions are redone.
GATE_VERSION = 1
REJECTED_LIST = "rejected.jsonl"
# Rejected candidates shown in the report (all are in rejected.jsonl).
REPORT_EXAMPLES = 10


def char_error_rates(texts: Sequence[str], hyps: Sequence[str], language: str) -> np.ndarray:
    """CER of each hypothesis against its label after the evaluation normalizer; a label that
    normalizes to nothing scores 0 against an empty hypothesis and inf against any other."""
    normalize = get_normalizer(language)
    refs, outs = [normalize(t) for t in texts], [normalize(h) for h in hyps]
    counts = error_counts(refs, outs, unit="char")
    errors, length = counts.errors.astype(float), counts.ref_len.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(length > 0, errors / np.maximum(length, 1), np.where(errors > 0, np.inf, 0.0))


def judge(
    texts: Sequence[str],
    audio: Sequence[np.ndarray],
    transcribe: Callable[[list[np.ndarray], bool], list[str]],
    max_cer: float,
    language: str,
    pack: bool,
) -> tuple[list[str], np.ndarray, int]:
    """Hypotheses and CERs of ``audio`` against ``texts``, and how many were decoded twice.

    ``transcribe(audio, pack)`` decodes; with ``pack`` the candidates over ``max_cer`` are decoded
    again alone and their second decoding is the one kept.
    """
    hyps = list(transcribe(list(audio), pack))
    cer = char_error_rates(texts, hyps, language)
    again = np.flatnonzero(cer > max_cer) if pack else np.array([], dtype=int)
    if len(again):
        alone = transcribe([audio[i] for i in again], False)
        for i, hyp in zip(again, alone, strict=True):
            hyps[i] = hyp
        cer[again] = char_error_rates([texts[i] for i in again], alone, language)
    return hyps, cer, len(again)


class Gate:
    """Decides and caches, shard by shard, which candidates say their transcript."""

    def __init__(self, args, gate_dir: Path, language: str = "en"):
        self.args = args
        self.language = args.gate_language or language  # language: generate.language, the target's
        self._asr = None
        model_path = resolve_model(args.gate_model)  # fails now, naming the fix, not after hours of TTS
        key = {
            "version": GATE_VERSION,
            "model": args.gate_model,
            "weights": model_fingerprint(model_path),
            "language": self.language,
            "pack": args.gate_pack,
            "max_cer": args.gate_max_cer,
            "origins": sorted(args.gate_origins),
        }
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.model_path = model_path
        self.dir = gate_dir / self.key

    def decisions_path(self, shard: str) -> Path:
        return self.dir / f"{shard}.json"

    def decided(self, shard: str, shard_fingerprint: str) -> bool:
        path = self.decisions_path(shard)
        return path.is_file() and files.read_json(path).get("shard_fingerprint") == shard_fingerprint

    def _transcribe(self, audio: list[np.ndarray], pack: bool) -> list[str]:
        if self._asr is None:
            # Under a launcher every process gates its shards on its own GPU (load_asr's default device).
            self._asr = load_asr(self.model_path, language=self.language)
        return self._asr.transcribe(audio, batch_size=self.args.gate_batch_size, pack=pack)

    def decide_shard(self, shard_dir: Path, shard_fingerprint: str, wait: bool = True) -> bool:
        """Decode the gated candidates of one finished shard and write its decisions; False (at
        once) when another process is deciding it and not ``wait``."""
        name = shard_dir.name
        with locks.output_lock(self.decisions_path(name), f"gate {name}", wait=wait) as held:
            if not held:
                return False
            if self.decided(name, shard_fingerprint):  # another process did it while we waited
                return True
            report = files.read_json(shard_dir / "shard.json")
            rows: dict[str, list] = {}
            t0, seconds, again = time.time(), 0.0, 0
            if report["candidates"]:  # an empty shard has no dataset to load
                ds = schema.without_audio_decoding(load_from_disk(str(shard_dir)))
                # A synthetic row with a parent is a variant of a clean rendering: it is judged
                # by its rendering's decision, so the cost grows with texts x voices, not variants.
                idx = [
                    i
                    for i, (o, parent) in enumerate(zip(ds["origin"], ds["parent_id"], strict=True))
                    if o in self.args.gate_origins and not (o == "synthetic" and parent)
                ]
                sub = ds.select(idx)
                audio = [schema.decode_audio(a) for a in sub["audio"]]
                seconds = sum(len(a) for a in audio) / schema.SAMPLE_RATE
                if audio:
                    hyps, cer, again = judge(
                        sub["text"],
                        audio,
                        self._transcribe,
                        self.args.gate_max_cer,
                        self.language,
                        self.args.gate_pack,
                    )
                    rows = {i: [h, float(c)] for i, h, c in zip(sub["id"], hyps, cer, strict=True)}
            decisions = {
                "shard_fingerprint": shard_fingerprint,
                "decode_seconds": time.time() - t0,
                "audio_seconds": seconds,
                "decoded_alone": again,
                "rows": rows,
            }
            files.write_json(decisions, self.decisions_path(name))
        return True

    def decide(self, shards: Sequence[tuple[Path, str]]) -> None:
        """Decisions for every ``(shard folder, fingerprint)`` not yet decided with this key: first
        those no other process is deciding, then, waiting for each, those others are (decided here
        if their process died). So the merging process decodes what is left beside the others
        instead of queueing behind the shard another process is on."""
        todo = [(d, f) for d, f in shards if not self.decided(d.name, f)]
        busy = []
        for shard_dir, fp in tqdm(todo, desc="gate", unit="shard", disable=len(todo) <= 1):
            if not self.decide_shard(shard_dir, fp, wait=False):
                busy.append((shard_dir, fp))
        for shard_dir, fp in busy:
            self.decide_shard(shard_dir, fp)

    def rejected(
        self, shard_names: Sequence[str], rows_meta: dict[str, dict[str, Any]]
    ) -> tuple[set[str], dict]:
        """Ids over the threshold and the gate's report, from the decisions of ``shard_names``; every
        rejected candidate, with its label, hypothesis and CER, is listed in ``rejected.jsonl``.

        ``rows_meta`` maps a candidate id to its text and generator (engine, voice, and for a
        variant the id of its rendering, whose rejection rejects it too).
        """
        decided = [files.read_json(self.decisions_path(n)) for n in shard_names]
        cers = {i: (h, c) for d in decided for i, (h, c) in d["rows"].items()}
        rejected = {i for i, (_, c) in cers.items() if c > self.args.gate_max_cer}
        with_rendering = {i for i, m in rows_meta.items() if m.get("rendering") in rejected}
        by_engine: dict[str, Counter] = {}
        by_voice: Counter = Counter()
        for i in cers:
            meta = rows_meta[i]
            c = by_engine.setdefault(meta["engine"] or "perturb", Counter())
            c["decoded"] += 1
            if i in rejected:
                c["rejected"] += 1
                by_voice[f"{meta['engine']}:{meta['voice']}" if meta["engine"] else "perturb"] += 1
        values = np.array([c for _, c in cers.values()], dtype=float)
        finite = values[np.isfinite(values)]
        decode_s = sum(d["decode_seconds"] for d in decided)
        audio_s = sum(d["audio_seconds"] for d in decided)
        worst = sorted(rejected, key=lambda i: -cers[i][1])[:REPORT_EXAMPLES]
        report = {
            "model": self.args.gate_model,
            "key": self.key,
            "max_cer": self.args.gate_max_cer,
            "origins": list(self.args.gate_origins),
            "decoded": len(cers),
            "rejected": len(rejected),
            "variants_rejected_with_their_rendering": len(with_rendering),
            "decoded_alone": sum(d["decoded_alone"] for d in decided),
            "by_engine": {
                k: {"decoded": v["decoded"], "rejected": v["rejected"]} for k, v in sorted(by_engine.items())
            },
            "rejected_by_voice": dict(by_voice.most_common()),
            "cer_quantiles": {
                q: round(float(np.quantile(finite, float(q))), 4) for q in ("0.5", "0.9", "0.99")
            }
            if len(finite)
            else {},
            "examples": [
                {"id": i, "text": rows_meta[i]["text"], "hyp": cers[i][0], "cer": round(cers[i][1], 3)}
                for i in worst
            ],
            "decode_seconds": round(decode_s, 1),
            "audio_seconds": round(audio_s, 1),
            "x_real_time": round(audio_s / decode_s, 1) if decode_s > 0 else None,
        }
        self._write_list(rejected, cers, rows_meta)
        return rejected | with_rendering, report

    def _write_list(self, rejected: set[str], cers: dict[str, tuple[str, float]], rows_meta: dict) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "w") as f:
                for i in sorted(rejected, key=lambda i: -cers[i][1]):
                    f.write(
                        json.dumps({"id": i, **rows_meta[i], "hyp": cers[i][0], "cer": cers[i][1]}) + "\n"
                    )

        files.atomic_file(self.dir.parent / REJECTED_LIST, write)
