"""The generate stage on a tiny prepared dataset with a fake TTS engine: provenance, the leakage
guard, failures counted by reason, determinism, and resuming a killed run shard by shard."""

import json
import logging
import os
import time

import numpy as np
import pytest
import torch
from conftest import tone
from datasets import Dataset, DatasetDict

from core import files, schema
from core.config import parse_args
from core.ranks import rank_and_world
from data_prep.candidates import tts
from data_prep.candidates.generate import generate
from data_prep.candidates.plan import voices_for_each_text
from data_prep.candidates.shards import shard_name
from data_prep.candidates.tts import SynthesisError
from data_prep.leakage import LeakageGuard, normalize_text

TEST_TEXTS = ["please hold the line", "your call is important"]
TRAIN_TEXTS = ["welcome to the demo", "press one for sales", "press two for support", "goodbye"]


class FakeEngine:
    """A deterministic stand-in for a TTS engine: a voice is a pitch, a text sets the length.
    Texts containing FAIL raise SynthesisError; SILENT returns silence."""

    name = "fake"
    rate = 22_050  # not 16 kHz, so the stage's resampling is exercised

    def available(self):
        return True

    def voices(self):
        return ["alpha", "beta", "gamma"]

    def accent(self, voice):
        return {"alpha": "us", "beta": "gb"}.get(voice, "")

    def params_for(self, voice, seed):
        return {"rate": float(np.random.default_rng(seed).random())}  # as real engines draw theirs

    def synthesize(self, text, voice, seed):
        if "FAIL" in text:
            raise SynthesisError(f"fake engine cannot say {text!r}")
        seconds = 0.3 + 0.02 * len(text)
        if "SILENT" in text:
            return np.zeros(int(seconds * self.rate), np.float32), self.rate
        freq = {"alpha": 110.0, "beta": 180.0, "gamma": 240.0}[voice]
        return tone(seconds, self.rate, freq=freq, seed=seed % 1000), self.rate


class MissingEngine(FakeEngine):
    def available(self):
        return False


ENGINES = ["test_generate:FakeEngine", "test_generate:MissingEngine"]


def prepared(root):
    """A prepare-stage output: target_train, target_test, source, protected_texts.json."""

    def rows(texts, speaker, start):
        return [
            schema.make_row(
                id=f"{speaker}-{i}",
                samples=tone(0.6 + 0.1 * i, freq=150 + 10 * i, seed=start + i),
                text=t,
                speaker=speaker,
                accent="x",
            )
            for i, t in enumerate(texts)
        ]

    splits = {
        "target_train": rows(TRAIN_TEXTS, "tgt", 0),
        "target_test": rows(TEST_TEXTS, "tgttest", 10),
        # One source speaker reads a test sentence: its perturbed copies must be refused.
        "source": rows(["a source sentence", TEST_TEXTS[0].upper() + "!", "another one"], "src", 20),
    }
    features = schema.features()
    dd = DatasetDict(
        {
            k: Dataset.from_dict({c: [r[c] for r in v] for c in features}, features=features)
            for k, v in splits.items()
        }
    )
    data = root / "exp" / "data"
    dd.save_to_disk(str(data))
    LeakageGuard(TEST_TEXTS).save(data / "protected_texts.json")
    corpus = root / "corpus.txt"
    corpus.write_text(
        "\n".join(
            [
                "a brand new sentence",
                "Your call is IMPORTANT.",
                "please FAIL here",
                "SILENT night",
                "",
                "goodbye",
            ]
        )
        + "\n"
    )
    return root / "exp", corpus


def run_generate(exp, corpus, *overrides):
    argv = [
        "--output_dir",
        str(exp),
        "--text_corpus",
        str(corpus),
        "--engines",
        *ENGINES,
        "--texts_per_voice",
        "0",
        # The fake voices hum tones: the intelligibility gate would reject every one (test_gate.py
        # runs it on speech).
        "--gate",
        "false",
    ]
    return generate(*parse_args("generate", [*argv, *overrides]))


@pytest.fixture
def exp(tmp_path):
    return prepared(tmp_path)


def load_candidates(exp):
    return schema.without_audio_decoding(schema.load_split(exp / "candidates" / "dataset"))


def test_candidates_carry_provenance_and_never_a_test_text(exp):
    exp, corpus = exp
    report = run_generate(exp, corpus, "--copies_per_utterance", "2", "--perturb_synthetic_prob", "0.5")
    ds = load_candidates(exp)
    assert set(ds.column_names) == set(schema.COLUMNS)
    rows = ds.to_list()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))

    guard = LeakageGuard(TEST_TEXTS)
    assert not any(guard.is_protected(r["text"]) for r in rows)

    real = {r["id"]: r for r in schema.load_split(exp / "data", "target_train").to_list()}
    real |= {r["id"]: r for r in schema.load_split(exp / "data", "source").to_list()}
    perturbed = [r for r in rows if r["origin"] == "perturbed"]
    synthetic = [r for r in rows if r["origin"] == "synthetic"]
    # 2 allowed source utterances (one reads a test text), 2 copies each; the copies of the 4
    # train utterances are in real_augmented, not candidates.
    assert len(perturbed) == 2 * 2
    for r in perturbed:
        parent = real[r["parent_id"]]
        gen = json.loads(r["generator"])
        assert r["text"] == parent["text"] and r["speaker"] == parent["speaker"]
        assert gen["ops"] and gen["seed"] and gen["source_split"] == "source"
    # Texts: 4 train + corpus lines; refused: 1 test text; duplicates: goodbye; empty line.
    # Allowed: 4 train + "a brand new sentence" + FAIL + SILENT = 7 per voice, 3 voices; the FAIL
    # and SILENT ones fail for every voice.
    assert len(synthetic) == 5 * 3
    voices = {json.loads(r["generator"])["voice"] for r in synthetic}
    assert voices == {"alpha", "beta", "gamma"}
    for r in synthetic:
        gen = json.loads(r["generator"])
        assert gen["engine"] == ENGINES[0] and r["speaker"] == f"{ENGINES[0]}:{gen['voice']}"
        assert r["accent"] == FakeEngine().accent(gen["voice"]) and r["parent_id"] == ""
    assert 0 < sum(bool(json.loads(r["generator"])["ops"]) for r in synthetic) < len(synthetic)
    for r in rows[:5]:
        samples = schema.decode_audio(r["audio"])
        assert abs(len(samples) / schema.SAMPLE_RATE - r["duration"]) < 1e-3

    assert report["candidates"] == len(rows) and report["real_augmented"] == 4 * 2 and report["made"] == 27
    assert report["by_origin"] == {"perturbed": 4, "synthetic": 15}
    assert report["failures"] == {"synthesis_error": 3, "silent_synthesis": 3}
    assert report["plan"]["texts"]["refused_protected"] == 1 and report["plan"]["texts"]["duplicate"] == 1
    assert report["plan"]["perturb"]["source"]["refused_protected"] == 1
    assert report["plan"]["engines"][ENGINES[1]] == {"available": False, "voices": []}
    assert sum(report["by_voice"].values()) == 15 and sum(report["by_op"].values()) > 0
    assert report["audio_hours"] > 0 and report["throughput"]["per_engine"][ENGINES[0]] > 0
    assert (exp / "candidates" / "config.yaml").is_file()
    assert json.loads((exp / "candidates" / "report.json").read_text())["candidates"] == len(rows)


def test_target_train_copies_are_not_candidates_by_default(exp):
    """Copies of the training utterances augment the real data in every arm; as candidates they
    would be what the filter prefers (they resemble their parents) and confound the ablation."""
    exp, corpus = exp
    train_ids = set(schema.load_split(exp / "data", "target_train")["id"])
    run_generate(exp, corpus, "--copies_per_utterance", "2")
    parents = set(load_candidates(exp)["parent_id"])
    assert parents and not parents & train_ids  # the source speakers' copies stay candidates
    augmented = schema.without_audio_decoding(schema.load_split(exp / "candidates" / "real_augmented"))
    assert sorted(augmented["parent_id"]) == sorted(2 * list(train_ids))
    assert set(augmented["origin"]) == {"perturbed"}
    # Asked for, they are candidates as before, and no real_augmented folder is left behind.
    report = run_generate(exp, corpus, "--copies_per_utterance", "2", "--target_copies_as_candidates", "true")
    assert train_ids <= set(load_candidates(exp)["parent_id"]) and report["real_augmented"] == 0
    assert not (exp / "candidates" / "real_augmented").exists()


def test_same_seed_same_candidates_other_seed_differs(tmp_path):
    exp_a, corpus = prepared(tmp_path / "a")
    exp_b, _ = prepared(tmp_path / "b")
    exp_c, _ = prepared(tmp_path / "c")
    for e, seed in ((exp_a, "0"), (exp_b, "0"), (exp_c, "1")):
        run_generate(e, corpus, "--seed", seed, "--max_voices_per_engine", "1", "--copies_per_utterance", "1")
    a, b, c = (load_candidates(e).to_list() for e in (exp_a, exp_b, exp_c))
    assert [(r["id"], r["generator"], r["audio"]["bytes"]) for r in a] == [
        (r["id"], r["generator"], r["audio"]["bytes"]) for r in b
    ]
    assert [r["generator"] for r in a] != [r["generator"] for r in c]


def test_killed_shard_is_redone_and_the_others_are_not(exp):
    exp, corpus = exp
    shards = exp / "candidates" / "shards"
    first = run_generate(exp, corpus, "--num_shards", "3")
    markers = {i: shards / shard_name(i, 3) / "shard.json" for i in range(3)}
    before = {i: m.stat().st_mtime_ns for i, m in markers.items()}
    # Kill simulation: shard 1 lost its marker mid-write, and a temp folder was left behind.
    markers[1].unlink()
    (shards / f".{shard_name(1, 3)}.tmp-stale").mkdir()
    time.sleep(0.01)
    second = run_generate(exp, corpus, "--num_shards", "3")
    after = {i: m.stat().st_mtime_ns for i, m in markers.items()}
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1] > before[1]
    assert not list(shards.glob(".*tmp-*"))
    assert second["candidates"] == first["candidates"]
    # A finished run reruns without touching anything.
    run_generate(exp, corpus, "--num_shards", "3")
    assert {i: m.stat().st_mtime_ns for i, m in markers.items()} == after


def test_changed_recipe_redoes_every_shard(exp, tmp_path):
    exp, corpus = exp
    run_generate(exp, corpus, "--num_shards", "2")
    marker = exp / "candidates" / "shards" / shard_name(0, 2) / "shard.json"
    before = marker.stat().st_mtime_ns
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ops:\n  - {op: gain, db: [-3.0, 3.0]}\n")
    report = run_generate(exp, corpus, "--num_shards", "2", "--perturb_recipe", str(recipe))
    assert marker.stat().st_mtime_ns > before
    assert set(report["by_op"]) == {"gain"}


def test_processes_take_their_own_shards_and_the_last_one_merges(exp, monkeypatch):
    exp, corpus = exp
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert rank_and_world() == (1, 2)
    assert run_generate(exp, corpus, "--num_shards", "4") is None  # shards 1 and 3; 0 and 2 pending
    shards = exp / "candidates" / "shards"
    made = sorted(p.name for p in shards.iterdir() if not p.name.startswith("."))  # not the shards' locks
    assert made == [shard_name(1, 4), shard_name(3, 4)]
    assert not (exp / "candidates" / "dataset").exists()
    monkeypatch.setenv("RANK", "0")
    report = run_generate(exp, corpus, "--num_shards", "4")
    assert report is not None and (exp / "candidates" / "dataset").is_dir()
    assert report["jobs"] == sum(
        files.read_json(shards / shard_name(i, 4) / "shard.json")["jobs"] for i in range(4)
    )
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    # A manual --shard_index runs exactly that shard.
    with pytest.raises(ValueError, match="outside"):
        run_generate(exp, corpus, "--num_shards", "4", "--shard_index", "7")


def test_shards_made_in_this_process_leave_its_thread_count(exp):
    # A shard is made on one thread; the gate then decodes in the same process (num_proc: 1) and
    # ran on one core of two when that setting leaked (8.4x instead of ~17x real time on the demo).
    exp, corpus = exp
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_generate(exp, corpus, "--num_shards", "2")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_guard_file_is_required(exp):
    exp, corpus = exp
    os.remove(exp / "data" / "protected_texts.json")
    with pytest.raises(FileNotFoundError, match="prepare"):
        run_generate(exp, corpus)


def test_missing_corpus_names_the_file(exp):
    exp, _ = exp
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        run_generate(exp, exp / "nope.txt")


def test_worker_processes(exp):
    exp, corpus = exp
    serial = run_generate(exp, corpus, "--num_shards", "2")
    ids = sorted(r["id"] for r in load_candidates(exp).to_list())
    exp2 = exp.parent / "exp2"
    os.rename(exp, exp2)
    parallel = run_generate(exp2, corpus, "--num_shards", "2", "--num_proc", "2")
    assert sorted(r["id"] for r in load_candidates(exp2).to_list()) == ids
    assert parallel["candidates"] == serial["candidates"] and parallel["fingerprint"] == serial["fingerprint"]


def test_texts_are_normalised_once(exp):
    exp, corpus = exp
    report = run_generate(
        exp, corpus, "--texts_per_voice", "2", "--max_synthetic", "4", "--copies_per_utterance", "0"
    )
    rows = load_candidates(exp).to_list()
    assert report["plan"]["jobs"] == {"perturb": 0, "tts": 4} and report["plan"]["synthetic_over_cap"] == 2
    per_voice = {}
    for r in rows:
        per_voice.setdefault(r["speaker"], set()).add(normalize_text(r["text"]))
    assert all(len(v) <= 2 for v in per_voice.values())


def test_empty_shards_are_merged_and_no_candidates_is_an_error(exp):
    exp, corpus = exp
    report = run_generate(exp, corpus, "--num_shards", "40")  # 33 jobs: 7 shards stay empty
    # 27 made: 8 copies of target_train (real_augmented) and 19 candidates
    assert report["jobs"] == 33 and len(load_candidates(exp)) == report["candidates"] == 19
    with pytest.raises(RuntimeError, match="no candidate"):
        run_generate(exp, corpus, "--copies_per_utterance", "0", "--voices", "nobody*")


def test_real_engines_when_installed(exp):
    names = [n for n in ("espeak-ng", "flite") if tts.get_engine(n).available()]
    if not names:
        pytest.skip("neither espeak-ng nor flite is installed")
    exp, corpus = exp
    overrides = ["--engines", *names, "--voices", "en-gb-scotland", "awb", "--texts_per_voice", "2"]
    report = run_generate(
        exp, corpus, *overrides, "--copies_per_utterance", "0", "--perturb_synthetic_prob", "0"
    )
    rows = load_candidates(exp).to_list()
    assert report["by_origin"] == {"synthetic": 2 * len(names)} and not report["failures"]
    for r in rows:
        gen = json.loads(r["generator"])
        assert r["accent"] == "en-gb-scotland" and gen["engine"] in names and gen["engine_params"]
        samples = schema.decode_audio(r["audio"])  # 16 kHz after resampling flite's and espeak's rates
        assert 0.5 < len(samples) / schema.SAMPLE_RATE < 10 and np.abs(samples).max() > 0.01


def test_engine_coin_and_recipe_draw_independently(exp, tmp_path):
    # One seed feeding the engine, the perturb-or-not coin and the recipe would correlate their
    # first draws: perturbed syntheses would get `speed` (p=0.3) 60% of the time, not 30%.
    exp, _ = exp
    corpus = tmp_path / "many.txt"
    corpus.write_text("\n".join(f"line {i}" for i in range(120)) + "\n")
    run_generate(exp, corpus, "--copies_per_utterance", "0", "--perturb_synthetic_prob", "0.5")
    gens = [json.loads(r["generator"]) for r in load_candidates(exp).to_list()]
    perturbed = [g for g in gens if g["ops"]]
    assert len(gens) == 3 * 124 and 0.4 < len(perturbed) / len(gens) < 0.6
    with_speed = sum(any(op["op"] == "speed" for op in g["ops"]) for g in perturbed) / len(perturbed)
    assert 0.2 < with_speed < 0.4
    slow = sum(g["engine_params"]["rate"] < 0.5 for g in perturbed) / len(perturbed)
    assert 0.4 < slow < 0.6
    assert all(len({g["seed"], g["engine_seed"], g["perturb_seed"]}) == 3 for g in perturbed)


def test_a_missing_engine_is_skipped_naming_what_to_install(exp, caplog):
    exp, corpus = exp
    with caplog.at_level(logging.WARNING, logger="data_prep.candidates.plan"):
        report = run_generate(exp, corpus, "--engines", ENGINES[0], "hf", ENGINES[1])
    assert report["plan"]["engines"]["hf"] == {"available": False, "voices": []}
    warnings = [r.getMessage() for r in caplog.records if "not installed" in r.getMessage()]
    assert warnings == [
        f"TTS engine hf is not installed: skipped ({tts.get_engine('hf').install_hint})",
        f"TTS engine {ENGINES[1]} is not installed: skipped (see the engine's documentation)",
    ]


def test_every_text_gets_its_voices_and_each_rendering_its_variants(exp):
    exp, corpus = exp
    report = run_generate(
        exp, corpus, "--voices_per_text", "2", "--variants_per_rendering", "2",
        "--variant_recipe", "telephone", "--copies_per_utterance", "0",
    )  # fmt: skip
    ds = load_candidates(exp)
    gens = [json.loads(g) for g in ds["generator"]]
    by_text = {}
    for cid, text, parent, gen in zip(ds["id"], ds["text"], ds["parent_id"], gens, strict=True):
        by_text.setdefault(normalize_text(text), []).append((cid, parent, gen))
    said = {normalize_text(t) for t in [*TRAIN_TEXTS, "a brand new sentence"]}
    assert set(by_text) == said  # FAIL and SILENT texts fail at synthesis, test texts are refused
    for rows in by_text.values():
        clean = [(c, g) for c, p, g in rows if not p]
        assert len(clean) == 2 and len({g["voice"] for _, g in clean}) == 2
        assert all(g["ops"] == [] and "variant" not in g for _, g in clean)
        for cid, g in clean:
            variants = [gen for _, p, gen in rows if p == cid]
            assert sorted(v["variant"] for v in variants) == [1, 2]
            assert all(v["rendering"] == cid and v["voice"] == g["voice"] for v in variants)
            assert all(any(op["op"] == "telephone" for op in v["ops"]) for v in variants)  # telephone: p=1
            assert variants[0]["perturb_seed"] != variants[1]["perturb_seed"]
    assert report["plan"]["renderings_per_text"] == 2.0
    # a failed synthesis makes neither the rendering nor its variants
    assert report["failures"]["synthesis_error"] == 2 and report["candidates"] == 3 * 2 * len(said)


def test_voices_of_a_text_do_not_depend_on_the_other_texts():
    speakers = [("e", v, ["a b", "c d", "e f"]) for v in "pqrstu"]
    one, _ = voices_for_each_text(["a b", "c d", "e f"], speakers, 3, run_seed=0)
    two, _ = voices_for_each_text(["e f", "a b"], speakers, 3, run_seed=0)
    assert {r for r in one if r[2] != "c d"} == set(two)
    other, _ = voices_for_each_text(["a b", "c d", "e f"], speakers, 3, run_seed=1)
    assert set(other) != set(one)
    unsayable = [("e", "p", ["a b"]), ("e", "q", [])]
    assert voices_for_each_text(["a b", "z"], unsayable, 5, run_seed=0) == ([("e", "p", "a b")], 1)


def test_text_only_transcripts_of_prepare_are_spoken_and_test_texts_still_refused(exp):
    exp, corpus = exp
    (exp / "data" / "unused_texts.txt").write_text("a prepared prompt\nplease hold the line\n")
    report = run_generate(exp, corpus, "--copies_per_utterance", "0")
    texts = {normalize_text(t) for t in load_candidates(exp)["text"]}
    assert "a prepared prompt" in texts and "please hold the line" not in texts
    assert report["plan"]["texts"]["prepared"] == 2
    run_generate(exp, corpus, "--copies_per_utterance", "0", "--prepared_texts", "false")
    assert "a prepared prompt" not in {normalize_text(t) for t in load_candidates(exp)["text"]}
