"""Planning of the generate stage: every candidate to make (a ``Job``), decided from the config and
the inputs alone, so every process of a run plans the same jobs in the same order."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from core import paths, schema
from core.seeding import derive_seed, stream_rng
from data_prep.candidates import tts
from data_prep.candidates.speakable import foreign_letters, language_of, other_language, unspeakable_symbols
from data_prep.leakage import LeakageGuard, normalize_text
from data_prep.sources import read_text_file

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Job:
    """One candidate to make: a TTS synthesis or a perturbed copy of a real utterance."""

    id: str
    kind: str  # "tts" | "perturb"
    seed: int
    text: str
    engine: str = ""
    voice: str = ""
    perturb: bool = True  # tts: also perturb the synthesis; perturb jobs always are
    variants: int = 0  # tts: perturbed variants made from the clean rendering, besides it
    split: str = ""  # perturb: split and row of the parent utterance
    row: int = -1
    copy: int = 0


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", s).strip("_") or "x"


def read_corpus(path: str, encoding: str = "utf-8") -> list[str]:
    """Every line of a text file, stripped (blank ones too, so the plan can count them); errors
    name the file, the line and the fix."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"text_corpus {p} not found: give a UTF-8 text file with one sentence a line, or leave it empty"
        )
    text = read_text_file(p, encoding, key="generate.text_corpus_encoding")
    # split on "\n" only: str.splitlines would also break a sentence at U+2028 or a form feed.
    lines = [line.strip() for line in text.split("\n")]
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line does not start a blank one
    return lines


def plan_texts(
    train_texts: list[str], corpus: list[str], guard: LeakageGuard, prepared: list[str] = ()
) -> tuple[list[str], dict[str, int]]:
    """Unique TTS texts (first spelling of each normalised sentence), test texts refused.

    ``prepared``: the transcripts prepare kept as text only. Every input is counted once:
    train + corpus + prepared == blank_lines + empty + unspeakable_symbols + duplicate +
    refused_protected + allowed (blank_lines: empty corpus lines; empty: nothing left after
    normalisation, e.g. a line of punctuation; unspeakable_symbols: emoji and the like, which
    engines read differently or not at all while the label keeps them).
    """
    seen: set[str] = set()
    texts: list[str] = []
    counts = dict(
        train=len(train_texts),
        corpus=len(corpus),
        prepared=len(prepared),
        blank_lines=0,
        empty=0,
        unspeakable_symbols=0,
        duplicate=0,
        refused_protected=0,
    )
    for text in [*train_texts, *corpus, *prepared]:
        norm = normalize_text(text)
        if not text.strip():
            counts["blank_lines"] += 1
        elif not norm:
            counts["empty"] += 1
        elif unspeakable_symbols(text):
            counts["unspeakable_symbols"] += 1
            log.debug("text refused for its symbols %r: %r", unspeakable_symbols(text), text)
        elif norm in seen:
            counts["duplicate"] += 1
        elif guard.is_protected(text):
            counts["refused_protected"] += 1
            seen.add(norm)
        else:
            seen.add(norm)
            texts.append(text)
    counts["allowed"] = len(texts)
    if counts["blank_lines"]:
        log.info(
            "text_corpus: %d blank line(s) skipped (counted in the plan's texts.blank_lines)",
            counts["blank_lines"],
        )
    return texts, counts


def select_voices(voices: list[str], patterns: list[str], max_voices: int, seed: int) -> list[str]:
    """The voices matching one of the shell ``patterns`` (all when empty), at most ``max_voices``
    of them (a seeded choice; 0: no cap), sorted."""
    kept = sorted(v for v in set(voices) if not patterns or any(fnmatch.fnmatchcase(v, p) for p in patterns))
    if max_voices and len(kept) > max_voices:
        rng = np.random.default_rng(seed)
        kept = sorted(kept[i] for i in rng.choice(len(kept), size=max_voices, replace=False))
    return kept


def _real_texts(data_dir: Path, splits: list[str]) -> dict[str, dict[str, list]]:
    """Ids and texts of each real split that exists (``source`` is optional)."""
    rows_by_split = {}
    for split in splits:
        try:
            ds = schema.load_split(data_dir, split)
        except KeyError:
            if split == "source":
                continue  # the prepare stage writes `source` only when there are other speakers
            raise
        rows_by_split[split] = ds.select_columns(["id", "text"]).to_dict()
    return rows_by_split


def _perturb_jobs(
    rows_by_split: dict[str, dict[str, list]], guard: LeakageGuard, copies: int, run_seed: int
) -> tuple[list[Job], dict[str, dict[str, int]]]:
    """Perturbed copies of real utterances, and counts per split; their texts pass the guard too
    (a source speaker may read a test sentence, and split_by=speaker shares texts with the test)."""
    jobs, counts = [], {}
    for split, cols in rows_by_split.items():
        refused = 0
        for row, (uid, text) in enumerate(zip(cols["id"], cols["text"], strict=True)):
            if guard.is_protected(text):
                refused += 1
                continue
            for k in range(copies):
                cid = f"{uid}-pert{k}"
                jobs.append(
                    Job(
                        id=cid,
                        kind="perturb",
                        seed=derive_seed(run_seed, cid),
                        text=text,
                        split=split,
                        row=row,
                        copy=k,
                    )
                )
        counts[split] = {"utterances": len(cols["id"]), "refused_protected": refused}
    return jobs, counts


def _speakers(
    texts: list[str], run_seed: int, args, plan: dict[str, Any]
) -> list[tuple[str, str, list[str]]]:
    """(engine, voice, the texts it can say) for every selected voice of every installed engine;
    the plan records the engines, their voices and the (voice, text) pairs refused for their script."""
    speakers = []
    for name in args.engines:
        engine = tts.cached_engine(name, args.engine_timeout, args.hf_model, args.language)
        if not engine.available():
            # Registered engines name what to install (e.g. `apt-get install flite`); yours may not.
            hint = getattr(engine, "install_hint", "") or "see the engine's documentation"
            log.warning("TTS engine %s is not installed: skipped (%s)", name, hint)
            plan["engines"][name] = {"available": False, "voices": []}
            continue
        # A voice of another language would read the target's texts with its own rules: skipped
        # before the seeded choice, so max_voices_per_engine counts usable voices. A voice whose
        # accent names no language known here is kept (a user's own engine may label it `us`).
        own, other = [], []
        for v in engine.voices():
            (other if other_language(engine.accent(v), args.language) else own).append(v)
        voices = select_voices(
            own, args.voices, args.max_voices_per_engine, derive_seed(run_seed, "voices", name)
        )
        plan["engines"][name] = {
            "available": True,
            "voices": voices,
            "skipped_other_language": len(other),
            "refused_foreign_script": 0,
        }
        if other and not own:
            log.warning(
                "TTS engine %s has no %s voice (its voices: %s): skipped", name, args.language, other[:5]
            )
        for voice in voices:
            # Only texts written in the voice's language's script: others come out as letter names.
            language = language_of(engine.accent(voice))
            sayable = [t for t in texts if not foreign_letters(t, language)]
            plan["engines"][name]["refused_foreign_script"] += len(texts) - len(sayable)
            speakers.append((name, voice, sayable))
    return speakers


def texts_for_each_voice(
    speakers: list[tuple[str, str, list[str]]], texts_per_voice: int, run_seed: int
) -> list[tuple[str, str, str]]:
    """(engine, voice, text): each voice speaks a seeded sample of the texts it can say (0: all)."""
    out = []
    for name, voice, sayable in speakers:
        rng = stream_rng(run_seed, "texts", name, voice)
        n = len(sayable) if not texts_per_voice else min(texts_per_voice, len(sayable))
        out += [
            (name, voice, sayable[i])
            for i in sorted(rng.choice(len(sayable), size=n, replace=False).tolist())
        ]
    return out


def voices_for_each_text(
    texts: list[str], speakers: list[tuple[str, str, list[str]]], voices_per_text: int, run_seed: int
) -> tuple[list[tuple[str, str, str]], int]:
    """(engine, voice, text): every text spoken by ``voices_per_text`` voices (all when fewer can
    say it), a seeded choice per text that depends on the text, not on its position in the list;
    and the number of texts no voice can say."""
    can_say = [set(sayable) for _, _, sayable in speakers]
    out, unsaid = [], 0
    for text in texts:
        able = [k for k, said in enumerate(can_say) if text in said]
        if not able:
            unsaid += 1
            continue
        rng = stream_rng(run_seed, "voices for", normalize_text(text))
        n = min(voices_per_text, len(able))
        for k in sorted(rng.choice(len(able), size=n, replace=False).tolist()):
            name, voice, _ = speakers[able[k]]
            out.append((name, voice, text))
    return out, unsaid


def _tts_jobs(texts: list[str], run_seed: int, args) -> tuple[list[Job], dict[str, Any]]:
    """The renderings (engine, voice, text) to synthesize as jobs; the report says which engines
    and voices were used and how many jobs the cap dropped."""
    plan: dict[str, Any] = {"engines": {}}
    speakers = _speakers(texts, run_seed, args, plan)
    if args.voices_per_text:
        renderings, plan["texts_no_voice_can_say"] = voices_for_each_text(
            texts, speakers, args.voices_per_text, run_seed
        )
    else:
        renderings = texts_for_each_voice(speakers, args.texts_per_voice, run_seed)
    jobs = []
    for name, voice, text in renderings:
        cid = (
            f"tts-{_slug(name)}-{_slug(voice)}-{hashlib.sha1(normalize_text(text).encode()).hexdigest()[:12]}"
        )
        seed = derive_seed(run_seed, cid)
        if args.variants_per_rendering:
            # the clean rendering is kept and its variants are drawn from it in the shard
            perturb, variants = False, args.variants_per_rendering
        else:
            perturb, variants = bool(stream_rng(seed, "perturb?").random() < args.perturb_synthetic_prob), 0
        jobs.append(
            Job(
                id=cid,
                kind="tts",
                seed=seed,
                text=text,
                engine=name,
                voice=voice,
                perturb=perturb,
                variants=variants,
            )
        )
    if args.max_synthetic and len(jobs) > args.max_synthetic:
        rng = stream_rng(run_seed, "max_synthetic")
        keep = set(rng.choice(len(jobs), size=args.max_synthetic, replace=False).tolist())
        plan["synthetic_over_cap"] = len(jobs) - len(keep)
        jobs = [j for i, j in enumerate(jobs) if i in keep]
    plan["renderings"] = len(jobs)
    plan["renderings_per_text"] = round(len(jobs) / max(len({normalize_text(j.text) for j in jobs}), 1), 2)
    return jobs, plan


def plan_jobs(run, args, data_dir: Path) -> tuple[list[Job], dict[str, Any]]:
    """Every job of the run, in a deterministic order, and the planning report."""
    guard = LeakageGuard.from_dataset_dir(data_dir)
    # perturb and engines are filled below; set here so the report lists them before texts.
    plan: dict[str, Any] = {"protected_texts": len(guard), "perturb": {}, "engines": {}}
    splits = ["target_train"] + (["source"] if args.include_source else [])
    rows_by_split = _real_texts(data_dir, splits)
    jobs, plan["perturb"] = _perturb_jobs(rows_by_split, guard, args.copies_per_utterance, run.seed)

    corpus = read_corpus(args.text_corpus, args.text_corpus_encoding) if args.text_corpus else []
    prepared_file = data_dir / paths.UNUSED_TEXTS
    prepared = read_corpus(str(prepared_file)) if args.prepared_texts and prepared_file.is_file() else []
    texts, plan["texts"] = plan_texts(rows_by_split["target_train"]["text"], corpus, guard, prepared)
    if plan["texts"]["refused_protected"] and not texts:
        log.warning(
            "every TTS text is a test text and was refused: no synthetic candidates (add a text_corpus)"
        )
    tts_jobs, tts_plan = _tts_jobs(texts, run.seed, args)
    plan.update(tts_plan)
    jobs.extend(tts_jobs)

    dup = [k for k, v in Counter(j.id for j in jobs).items() if v > 1]
    if dup:
        raise ValueError(
            f"candidate ids collide (e.g. {dup[:3]}): utterance ids in {data_dir} must be unique across splits"
        )
    plan["jobs"] = {"perturb": len(jobs) - len(tts_jobs), "tts": len(tts_jobs)}
    return jobs, plan
