"""The prepare stage: every kind of bad input, resampling/mono, splits, the leakage guard."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_wav

from core import schema
from core.config import parse_args
from data_prep.leakage import LeakageGuard
from data_prep.prepare import BadInput, prepare
from data_prep.sources import ASTERISK_SOUNDS, _spoken_text, read_asterisk


def run_prepare(tmp_path, *overrides):
    run, args = parse_args("prepare", ["--output_dir", str(tmp_path / "exp"), *overrides])
    return run, args, prepare(run, args)


def write_manifest(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "audio", "text", "speaker"])
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def messy_source(tmp_path):
    """A CSV manifest with good files in odd formats and one of every kind of bad input."""
    d = tmp_path / "src"
    write_wav(d / "good16k.wav", tone(1.0, 16_000, seed=1))
    write_wav(d / "stereo44k.wav", tone(1.5, 44_100, seed=2, channels=2), 44_100)
    write_wav(d / "tel8k.wav", tone(2.0, 8_000, seed=3), 8_000)
    write_wav(d / "other.wav", tone(1.0, 16_000, seed=4))
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    sf.write(d / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    nan = tone(0.5, 16_000, seed=5)
    nan[100] = np.nan
    sf.write(d / "nan.wav", nan, 16_000, subtype="FLOAT")
    write_wav(d / "long.wav", tone(31.0, 8_000, seed=6), 8_000)
    rows = [
        {"id": "u1", "audio": "good16k.wav", "text": "turn left", "speaker": "a"},
        {"id": "u2", "audio": "stereo44k.wav", "text": "turn right", "speaker": "a"},
        {"id": "u3", "audio": "tel8k.wav", "text": "go straight", "speaker": "b"},
        {"id": "u4", "audio": "other.wav", "text": "stop here", "speaker": "b"},
        {"id": "bad-missing", "audio": "nowhere.wav", "text": "x", "speaker": "a"},
        {"id": "bad-corrupt", "audio": "corrupt.wav", "text": "x", "speaker": "a"},
        {"id": "bad-empty", "audio": "empty.wav", "text": "x", "speaker": "a"},
        {"id": "bad-nan", "audio": "nan.wav", "text": "x", "speaker": "a"},
        {"id": "bad-notext", "audio": "good16k.wav", "text": "   ", "speaker": "a"},
        {"id": "bad-long", "audio": "long.wav", "text": "x", "speaker": "a"},
        {"id": "u1", "audio": "other.wav", "text": "duplicate", "speaker": "a"},
    ]
    manifest = d / "manifest.csv"
    write_manifest(manifest, rows)
    # (a byte that is not UTF-8 stops the run naming the line: tests/test_sources.py)
    return manifest


def test_bad_inputs_are_skipped_counted_and_named(tmp_path, messy_source):
    run, args, report = run_prepare(
        tmp_path, "--source", "csv", "--path", str(messy_source), "--split_by", "utterance"
    )
    assert report["dropped"] == {
        "missing_file": 1,
        "corrupt_audio": 1,
        "empty_audio": 1,
        "non_finite": 1,
        "empty_transcript": 1,
        "too_long": 1,
        "duplicate_id": 1,
    }
    assert sum(report["kept"].values()) == 4
    assert report["listed"] == 11
    # each reason keeps an example that names the file and the fix
    assert "nowhere.wav" in report["dropped_examples"]["missing_file"][0]
    assert "fix:" in report["dropped_examples"]["corrupt_audio"][0]
    out = tmp_path / "exp" / "data"
    assert (out / "report.json").is_file() and (out / "config.yaml").is_file()
    assert json.loads((out / "report.json").read_text())["dropped"]["non_finite"] == 1


@pytest.mark.parametrize(
    "row_audio, text, reason",
    [
        ("nowhere.wav", "x", "missing file"),
        ("corrupt.wav", "x", "corrupt audio"),
        ("empty.wav", "x", "empty audio"),
        ("nan.wav", "x", "non finite"),
        ("good16k.wav", "", "empty transcript"),
        ("long.wav", "x", "too long"),
    ],
)
def test_on_error_raise_names_file_and_fix(tmp_path, messy_source, row_audio, text, reason):
    m = messy_source.parent / "one.csv"
    write_manifest(m, [{"id": "z", "audio": row_audio, "text": text, "speaker": "a"}])
    with pytest.raises(BadInput, match=reason) as e:
        run_prepare(tmp_path, "--source", "csv", "--path", str(m), "--on_error", "raise")
    assert row_audio in str(e.value) and "fix:" in str(e.value)


def test_audio_is_mono_16k_with_true_duration(tmp_path, messy_source):
    run_prepare(
        tmp_path,
        "--source",
        "csv",
        "--path",
        str(messy_source),
        "--split_by",
        "utterance",
        "--test_fraction",
        "0.5",
    )
    dd = schema.load_split(tmp_path / "exp" / "data", "target_train")
    rows = {}
    for split in ("target_train", "target_test"):
        ds = schema.without_audio_decoding(schema.load_split(tmp_path / "exp" / "data", split))
        for r in ds:
            rows[r["id"]] = r
    assert set(rows) == {"u1", "u2", "u3", "u4"}
    for uid, seconds in {"u1": 1.0, "u2": 1.5, "u3": 2.0}.items():
        audio = schema.decode_audio(rows[uid]["audio"])
        assert audio.ndim == 1
        assert len(audio) == pytest.approx(seconds * 16_000, abs=2)
        assert rows[uid]["duration"] == pytest.approx(seconds, abs=1e-3)
    info = sf.info(__import__("io").BytesIO(rows["u2"]["audio"]["bytes"]))
    assert (info.samplerate, info.channels) == (16_000, 1)
    # the resampled tone keeps its pitch: 44.1 kHz stereo -> 16 kHz mono, spectral peak at 220 Hz
    a = schema.decode_audio(rows["u2"]["audio"])
    spec = np.abs(np.fft.rfft(a))
    assert abs(np.fft.rfftfreq(len(a), 1 / 16_000)[spec.argmax()] - 220) < 3
    assert dd.features["audio"].sampling_rate == 16_000
    gen = json.loads(rows["u2"]["generator"])
    assert gen["original_rate"] == 44_100 and gen["original_channels"] == 2


def test_audiofolder_and_jsonl(tmp_path):
    d = tmp_path / "af"
    for i in range(4):
        write_wav(d / f"clip{i}.wav", tone(0.5, 16_000, seed=i))
    (d / "metadata.csv").write_text(
        "file_name,text,speaker\n" + "".join(f"clip{i}.wav,word {i},s{i % 2}\n" for i in range(4))
    )
    _, _, rep = run_prepare(tmp_path, "--source", "audiofolder", "--path", str(d), "--split_by", "speaker")
    assert rep["kept"] == {"target_train": 2, "target_test": 2}
    assert set(rep["speakers"]["target_train"]).isdisjoint(rep["speakers"]["target_test"])
    j = d / "m.jsonl"
    j.write_text(
        "".join(
            json.dumps({"audio": f"clip{i}.wav", "text": f"w {i}", "speaker": "s"}) + "\n" for i in range(4)
        )
    )
    _, _, rep = run_prepare(tmp_path, "--source", "jsonl", "--path", str(j), "--split_by", "utterance")
    assert sum(rep["kept"].values()) == 4


def fsdd_layout(root, speakers=("alice", "bob"), per_digit=2):
    for s_i, spk in enumerate(speakers):
        for digit in range(10):
            for k in range(per_digit):
                write_wav(
                    root / "recordings" / f"{digit}_{spk}_{k}.wav",
                    tone(0.4, 8_000, 150 + 20 * digit + s_i, seed=k),
                    8_000,
                )
    (root / "metadata.py").write_text(
        "metadata = {'alice': {'accent': 'USA/neutral'}, 'bob': {'accent': 'DEU/German'}}\n"
    )
    return root


def test_fsdd_target_speaker_source_split_and_leakage_guard(tmp_path):
    root = fsdd_layout(tmp_path / "fsdd")
    _, _, rep = run_prepare(
        tmp_path,
        "--source",
        "fsdd",
        "--path",
        str(root),
        "--target_speakers",
        "bob",
        "--split_by",
        "utterance",
        "--test_fraction",
        "0.5",
    )
    assert rep["kept"] == {"target_train": 10, "target_test": 10, "source": 20}
    assert rep["speakers"]["source"] == ["alice"]
    out = tmp_path / "exp" / "data"
    train = schema.load_split(out, "target_train")
    assert set(train["speaker"]) == {"bob"} and set(train["accent"]) == {"DEU/German"}
    assert set(train["text"]) <= {
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    }
    guard = LeakageGuard.from_dataset_dir(out)
    for text in schema.load_split(out, "target_test")["text"]:
        assert guard.is_protected(text) and guard.is_protected(text.upper() + "!")
    assert not guard.is_protected("a sentence nobody holds out")


def repeated_texts_folder(d, n_clips: int, n_texts: int):
    """An audiofolder of one speaker where each of ``n_texts`` sentences is recorded several times."""
    lines = []
    for i in range(n_clips):
        write_wav(d / f"c{i}.wav", tone(0.3, 16_000, seed=i))
        lines.append(f"c{i}.wav,Sentence number {i % n_texts}.,s\n")
    (d / "metadata.csv").write_text("file_name,text,speaker\n" + "".join(lines))
    return d


def test_split_by_text_never_shares_a_sentence(tmp_path):
    d = repeated_texts_folder(tmp_path / "af", 30, 10)  # every text recorded 3 times
    _, _, rep = run_prepare(
        tmp_path, "--source", "audiofolder", "--path", str(d), "--split_by", "text", "--test_fraction", "0.3"
    )
    out = tmp_path / "exp" / "data"
    train, test = (set(schema.load_split(out, s)["text"]) for s in ("target_train", "target_test"))
    assert train.isdisjoint(test) and len(test) == 3 and rep["kept"]["target_test"] == 9
    # same seed, same split; another seed, another split
    _, _, again = run_prepare(
        tmp_path, "--source", "audiofolder", "--path", str(d), "--split_by", "text", "--test_fraction", "0.3"
    )
    assert set(schema.load_split(out, "target_test")["text"]) == test
    run_prepare(
        tmp_path,
        "--source",
        "audiofolder",
        "--path",
        str(d),
        "--split_by",
        "text",
        "--test_fraction",
        "0.3",
        "--seed",
        "5",
    )
    assert set(schema.load_split(out, "target_test")["text"]) != test


def test_dev_split_is_held_out_by_text_and_protected(tmp_path):
    d = repeated_texts_folder(tmp_path / "af", 40, 20)  # every text recorded twice
    _, _, rep = run_prepare(
        tmp_path,
        "--source",
        "audiofolder",
        "--path",
        str(d),
        "--split_by",
        "text",
        "--test_fraction",
        "0.5",
        "--dev_utterances",
        "5",
    )
    out = tmp_path / "exp" / "data"
    train, dev, test = (
        set(schema.load_split(out, s)["text"]) for s in ("target_train", "target_dev", "target_test")
    )
    assert train.isdisjoint(dev) and train.isdisjoint(test) and dev.isdisjoint(test)
    # whole texts move: 3 texts (6 utterances) to reach at least 5
    assert len(dev) == 3 and rep["kept"] == {"target_train": 20, "target_dev": 6, "target_test": 14}
    assert rep["protected_texts"] == 10
    with pytest.raises(ValueError, match="dev_utterances"):
        run_prepare(
            tmp_path,
            "--source",
            "audiofolder",
            "--path",
            str(d),
            "--test_fraction",
            "0.5",
            "--dev_utterances",
            "50",
        )


def test_caps_are_counted(tmp_path):
    root = fsdd_layout(tmp_path / "fsdd", speakers=("bob",))
    _, _, rep = run_prepare(
        tmp_path,
        "--source",
        "fsdd",
        "--path",
        str(root),
        "--split_by",
        "utterance",
        "--max_train_utterances",
        "4",
    )
    assert rep["kept"]["target_train"] == 4 and rep["dropped"]["over_max_train_utterances"] == 6


def test_left_out_transcripts_become_text_only_never_a_dev_or_test_text(tmp_path):
    d = repeated_texts_folder(tmp_path / "af", 40, 20)  # every text recorded twice
    common = [
        "--source",
        "audiofolder",
        "--path",
        str(d),
        "--split_by",
        "utterance",
        "--test_fraction",
        "0.5",
    ]
    _, _, rep = run_prepare(
        tmp_path, *common, "--dev_utterances", "4", "--max_train_utterances", "3",
        "--max_test_utterances", "5", "--unused_texts", "true",
    )  # fmt: skip
    out = tmp_path / "exp" / "data"
    lines = (out / "unused_texts.txt").read_text().splitlines()
    held_out = {t for s in ("target_dev", "target_test") for t in schema.load_split(out, s)["text"]}
    guard = LeakageGuard.from_dataset_dir(out)
    assert lines and not held_out & set(lines) and not any(guard.is_protected(t) for t in lines)
    assert len(set(lines)) == len(lines)
    # split_by utterance: a left-out recording shares its text with a test one, so it is refused;
    # every left-out row is kept, refused as protected, or a repeat of a kept text.
    counts = rep["unused_texts"]
    assert counts["protected"] > 0
    assert counts["left_out"] == 40 - 3 - rep["kept"]["target_dev"] - 5
    assert (
        counts["kept"] + counts["protected"] + counts["duplicate"]
        == counts["left_out"]
        == len(lines) + counts["protected"] + counts["duplicate"]
    )
    run_prepare(tmp_path, *common, "--max_train_utterances", "3")  # off by default: no file
    assert not (out / "unused_texts.txt").exists()


@pytest.mark.skipif(not ASTERISK_SOUNDS.is_dir(), reason="asterisk-core-sounds-en-wav not installed")
def test_asterisk_listing_drops_tones():
    listing = list(read_asterisk())
    tones = [u for u in listing if u.skip_reason == "no_speech"]
    speech = [u for u in listing if not u.skip_reason]
    assert len(speech) > 500 and 5 <= len(tones) < 30
    assert all(u.text and not any(c in u.text for c in "[(<*#") for u in speech)
    by_id = {u.id: u for u in listing}
    # descriptions in any bracket style are not speech: silence and beeps are skipped
    assert (
        by_id["asterisk-silence-1"].skip_reason
        == by_id["asterisk-confbridge-leave"].skip_reason
        == "no_speech"
    )
    assert by_id["asterisk-spy-iax2"].text == "IAX"
    # the keypad symbols are spoken as words
    assert "separated by star and then" in by_id["asterisk-demo-enterkeywords"].text


def test_asterisk_spoken_text():
    assert (
        _spoken_text("Press # to enter a new [=] name (simple tone sound plays)")
        == "Press pound to enter a new name"
    )
    assert _spoken_text("<beep ascending>") == ""
    assert _spoken_text("C# stays") == "C# stays"


def test_target_accents(tmp_path):
    root = fsdd_layout(tmp_path / "fsdd")
    _, _, rep = run_prepare(
        tmp_path,
        "--source",
        "fsdd",
        "--path",
        str(root),
        "--target_accents",
        "USA/neutral",
        "--split_by",
        "utterance",
    )
    assert rep["speakers"]["target_train"] == ["alice"] and rep["speakers"]["source"] == ["bob"]
    with pytest.raises(ValueError, match="Klingon"):
        run_prepare(tmp_path, "--source", "fsdd", "--path", str(root), "--target_accents", "Klingon")


# --- splits named by the data ----------------------------------------------------------------------
def split_manifest(d, rows):
    """A CSV manifest with a `split` column; rows are (split, text, speaker, accent)."""
    lines = []
    for i, (split, text, speaker, accent) in enumerate(rows):
        write_wav(d / f"c{i}.wav", tone(0.3, 16_000, seed=i))
        lines.append(f"c{i}.wav,{split},{text},{speaker},{accent}\n")
    (d / "m.csv").write_text("audio,split,text,speaker,accent\n" + "".join(lines))
    return d / "m.csv"


def test_split_column_gives_the_roles_without_a_resplit(tmp_path):
    m = split_manifest(
        tmp_path / "src",
        [
            ("train", "turn left", "a", "in"),
            ("train", "turn right", "b", "in"),
            ("train", "go home", "c", "scot"),  # not the target: to source
            ("train", "yes please", "a", "in"),  # a test text: refused
            ("dev", "stop now", "d", "in"),
            ("test", "yes please", "e", "in"),
            ("test", "open it", "f", "scot"),  # not the target, held out: dropped, never source
            ("extra", "anything", "g", "in"),
        ],
    )
    _, _, rep = run_prepare(
        tmp_path,
        "--source",
        "csv",
        "--path",
        str(m),
        "--target_accents",
        "in",
        "--split_column",
        "split",
        "--split_map",
        "train=target_train",
        "dev=target_dev",
        "test=target_test",
        "extra=skip",
        "--test_fraction",
        "0.9",
    )
    assert rep["kept"] == {"target_train": 2, "target_dev": 1, "target_test": 1, "source": 1}
    assert rep["dropped"] == {"refused_protected_text": 1, "non_target_held_out": 1, "split_not_used": 1}
    assert rep["listed"] == 8 and rep["test_fraction"] == "ignored: the splits come from the data"
    assert rep["splits_from_data"]["target_train"] == {"from": ["split=train"], "listed": 4}
    out = tmp_path / "exp" / "data"
    assert sorted(schema.load_split(out, "target_train")["text"]) == ["turn left", "turn right"]
    assert schema.load_split(out, "source")["text"] == ["go home"]
    guard = LeakageGuard.from_dataset_dir(out)
    assert guard.is_protected("Yes, please!") and guard.is_protected("stop now")


def test_role_sources_read_one_manifest_per_role_and_carve_dev_from_train(tmp_path):
    train = split_manifest(
        tmp_path / "train",
        [("", f"sentence {i}", f"s{i % 3}", "") for i in range(6)] + [("", "the test line", "s0", "")],
    )
    test = split_manifest(tmp_path / "test", [("", "the test line", "t", ""), ("", "another", "t", "")])
    _, _, rep = run_prepare(
        tmp_path,
        "--source",
        "csv",
        "--role_sources",
        f"target_train={train}",
        f"target_test={test}",
        "--split_by",
        "speaker",
        "--dev_utterances",
        "1",
        "--max_train_utterances",
        "3",
    )
    # 7 train rows - 1 protected text = 6; one speaker (2 rows) to dev; the cap keeps 3 of 4
    assert rep["kept"] == {"target_train": 3, "target_dev": 2, "target_test": 2}
    assert rep["dropped"] == {"refused_protected_text": 1, "over_max_train_utterances": 1}
    assert rep["splits_from_data"] == {
        "target_train": {"from": [str(train)], "listed": 7},
        "target_test": {"from": [str(test)], "listed": 2},
    }
    out = tmp_path / "exp" / "data"
    # both folders hold c0.wav: ids from file names carry the role
    assert set(schema.load_split(out, "target_test")["id"]) == {"target_test-c0", "target_test-c1"}
    assert len(set(schema.load_split(out, "target_dev")["speaker"])) == 1


def test_role_sources_from_a_local_parquet_dataset_with_two_splits(tmp_path):
    """source hub with a local folder: `datasets` reads `<split>-*.parquet` as splits, as on the Hub."""
    from datasets import Audio, Dataset

    d = tmp_path / "ds" / "data"
    d.mkdir(parents=True)
    for split, texts in (("validation", ["one two", "three four"]), ("test", ["five six"])):
        audio = [
            {"path": f"{split}{i}.wav", "array": tone(0.4, seed=i), "sampling_rate": 16_000}
            for i in range(len(texts))
        ]
        ds = Dataset.from_dict({"audio": audio, "text": texts, "speaker": ["p"] * len(texts)})
        ds.cast_column("audio", Audio()).to_parquet(str(d / f"{split}-00000-of-00001.parquet"))
    _, _, rep = run_prepare(
        tmp_path,
        "--source",
        "hub",
        "--path",
        str(tmp_path / "ds"),
        "--role_sources",
        "target_train=validation",
        "target_test=test",
    )
    assert rep["kept"] == {"target_train": 2, "target_test": 1}
    assert rep["splits_from_data"]["target_test"]["from"] == [f"{tmp_path / 'ds'} [test]"]
