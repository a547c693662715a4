"""Manifest readers: encodings, paths confined to the manifest's folder, header checks before any
audio is decoded, plain corrupt-audio reasons, blank corpus lines counted."""

import json
import logging
import os
import re

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_wav, written

from core.config import parse_args
from data_prep import prepare as prepare_mod
from data_prep.candidates.plan import plan_texts, read_corpus
from data_prep.leakage import LeakageGuard
from data_prep.prepare import BadInput, prepare
from data_prep.sources import SourceError


def run_prepare(tmp_path, *overrides):
    run, args = parse_args("prepare", ["--output_dir", str(tmp_path / "exp"), *overrides])
    return prepare(run, args)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any audio is decoded: header problems must be found before that."""

    def refuse(*a, **k):
        raise AssertionError("audio was decoded before the manifest was checked")

    monkeypatch.setattr(prepare_mod, "decode_file", refuse)


@pytest.fixture
def latin1_folder(tmp_path):
    """An audiofolder whose metadata.csv was saved as Latin-1: `José` and an existing `café.wav`."""
    d = tmp_path / "af"
    write_wav(d / "café.wav", tone(0.5, seed=1))
    write_wav(d / "b.wav", tone(0.5, seed=2))
    (d / "metadata.csv").write_bytes(
        "file_name,text,speaker\ncafé.wav,un café,José\nb.wav,bonjour,José\n".encode("latin-1")
    )
    return d


# --- encodings ---------------------------------------------------------------------------------
def test_latin1_manifest_with_its_encoding_keeps_names_and_paths(tmp_path, latin1_folder):
    rep = run_prepare(
        tmp_path,
        "--source",
        "audiofolder",
        "--path",
        str(latin1_folder),
        "--encoding",
        "latin-1",
        "--split_by",
        "utterance",
    )
    assert rep["dropped"] == {}  # café.wav is found, not reported missing as b'caf\xe9.wav'
    assert {s for v in rep["speakers"].values() for s in v} == {"José"}


def test_wrong_encoding_names_file_line_and_fix_before_decoding(tmp_path, latin1_folder, no_decoding):
    with pytest.raises(SourceError) as e:
        run_prepare(tmp_path, "--source", "audiofolder", "--path", str(latin1_folder))
    msg = str(e.value)
    assert "metadata.csv, line 2" in msg and "prepare.encoding" in msg and "latin-1" in msg
    assert not written(tmp_path / "exp")


def test_latin1_jsonl_and_unknown_encoding(tmp_path, no_decoding):
    d = tmp_path / "j"
    d.mkdir()
    m = d / "m.jsonl"
    m.write_bytes(b'{"audio": "a.wav", "text": "ok"}\n\n{"audio": "b.wav", "text": "caf\xe9"}\n')
    with pytest.raises(SourceError, match=r"m.jsonl, line 3: not valid utf-8"):
        run_prepare(tmp_path, "--source", "jsonl", "--path", str(m))
    with pytest.raises(SourceError, match="not a known text encoding"):
        run_prepare(tmp_path, "--source", "jsonl", "--path", str(m), "--encoding", "latin-42")
    with pytest.raises(SourceError, match="not a known text encoding"):
        run_prepare(tmp_path, "--source", "jsonl", "--path", str(m), "--encoding", "hex")


def test_utf8_bom_is_accepted(tmp_path):
    d = tmp_path / "af"
    write_wav(d / "a.wav", tone(0.5))
    (d / "metadata.csv").write_bytes("file_name,text\na.wav,naïve\n".encode("utf-8-sig"))
    rep = run_prepare(tmp_path, "--source", "audiofolder", "--path", str(d), "--test_fraction", "0.5")
    assert sum(rep["kept"].values()) == 1


def test_prepare_cli_prints_the_reason_without_a_traceback(tmp_path, latin1_folder):
    argv = ["--output_dir", str(tmp_path / "exp"), "--source", "audiofolder", "--path", str(latin1_folder)]
    with pytest.raises(SystemExit) as e:
        prepare_mod.main(argv)
    assert str(e.value).startswith("prepare: ") and "line 2" in str(e.value)


# --- paths outside the manifest's folder ---------------------------------------------------------
@pytest.fixture
def escaping(tmp_path):
    """A folder whose manifest names files outside it in every way, and one symlink inside it."""
    d = tmp_path / "inside"
    write_wav(d / "ok.wav", tone(0.5, seed=1))
    write_wav(tmp_path / "outside.wav", tone(0.5, seed=2))
    (d / "sub").mkdir()
    os.symlink(tmp_path / "outside.wav", d / "linked.wav")  # the folder owner's choice: followed
    rows = [
        ("ok.wav", "inside"),
        ("../outside.wav", "dot dot"),
        (str(tmp_path / "outside.wav"), "absolute"),
        ("/etc/passwd", "not audio"),
        ("sub/../../outside.wav", "climbs"),
        ("linked.wav", "symlink"),
    ]
    return d, rows


def write_rows(d, kind, rows):
    if kind == "jsonl":
        path = d / "m.jsonl"
        path.write_text("".join(json.dumps({"audio": a, "text": t}) + "\n" for a, t in rows))
    else:
        path = d / ("metadata.csv" if kind == "audiofolder" else "m.csv")
        col = "file_name" if kind == "audiofolder" else "audio"
        path.write_text(f"{col},text\n" + "".join(f"{a},{t}\n" for a, t in rows))
    return d if kind == "audiofolder" else path


@pytest.mark.parametrize("kind", ["csv", "jsonl", "audiofolder"])
def test_paths_outside_the_folder_are_refused_and_counted(tmp_path, escaping, kind, monkeypatch):
    d, rows = escaping
    opened = []
    real_decode = prepare_mod.decode_file
    monkeypatch.setattr(prepare_mod, "decode_file", lambda p, b: opened.append(p) or real_decode(p, b))
    path = write_rows(d, kind, rows)
    rep = run_prepare(tmp_path, "--source", kind, "--path", str(path), "--test_fraction", "0.5")
    assert rep["dropped"] == {"path_outside_folder": 4}
    assert sum(rep["kept"].values()) == 2  # ok.wav and the symlink
    assert sorted(os.path.basename(p) for p in opened) == ["linked.wav", "ok.wav"]
    example = rep["dropped_examples"]["path_outside_folder"][0]
    assert "../outside.wav" in example and "allow_outside_paths" in example

    rep = run_prepare(
        tmp_path,
        "--source",
        kind,
        "--path",
        str(path),
        "--test_fraction",
        "0.5",
        "--allow_outside_paths",
        "true",
    )
    assert sum(rep["kept"].values()) == 5 and rep["dropped"] == {"corrupt_audio": 1}  # /etc/passwd


def test_on_error_raise_stops_at_an_outside_path(tmp_path, escaping, no_decoding):
    d, rows = escaping
    path = write_rows(d, "csv", [rows[3]])
    with pytest.raises(BadInput, match="/etc/passwd.*path outside folder"):
        run_prepare(tmp_path, "--source", "csv", "--path", str(path), "--on_error", "raise")


def test_empty_and_nul_paths_are_counted_not_a_crash(tmp_path):
    d = tmp_path / "j"
    write_wav(d / "a.wav", tone(0.5))
    m = d / "m.jsonl"
    rows = [
        {"audio": "a.wav", "text": "fine"},
        {"audio": "", "text": "no file"},
        {"text": "no key"},
        {"audio": "a\u0000.wav", "text": "nul"},
        {"audio": "x" * 5000 + ".wav", "text": "too long a name"},
    ]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = run_prepare(tmp_path, "--source", "jsonl", "--path", str(m), "--test_fraction", "0.5")
    assert rep["dropped"] == {"invalid_path": 3, "missing_file": 1} and sum(rep["kept"].values()) == 1


# --- header checks before any audio is decoded -------------------------------------------------
def test_missing_text_column_is_named_with_the_columns_found(tmp_path, no_decoding):
    d = tmp_path / "af"
    write_wav(d / "a.wav", tone(0.5))
    (d / "metadata.csv").write_text("file_name,transcript,speaker\na.wav,hello,s\n")
    with pytest.raises(SourceError) as e:
        run_prepare(tmp_path, "--source", "audiofolder", "--path", str(d))
    msg = str(e.value)
    assert "'text'" in msg and "['file_name', 'transcript', 'speaker']" in msg and "text_column" in msg


def test_the_fix_for_a_missing_text_column_works(tmp_path):
    d = tmp_path / "af"
    write_wav(d / "a.wav", tone(0.5))
    (d / "metadata.csv").write_text("file_name,transcript\na.wav,hello\n")
    rep = run_prepare(
        tmp_path,
        "--source",
        "audiofolder",
        "--path",
        str(d),
        "--text_column",
        "transcript",
        "--test_fraction",
        "0.5",
    )
    assert sum(rep["kept"].values()) == 1


@pytest.mark.parametrize(
    "kind, header, overrides, expected",
    [
        ("csv", "path,text", [], "no audio file path column 'audio'"),
        ("audiofolder", "audio,text", [], "`file_name` column"),
        (
            "csv",
            "audio,text",
            ["--target_speakers", "bob"],
            "no speaker id column 'speaker' (target_speakers",
        ),
        ("csv", "audio,text,accent", ["--target_accents", "x"], "accents ['x'] not found"),
        ("csv", "audio,text,speaker", ["--target_speakers", "bob", "bobby"], "speakers ['bobby'] not found"),
        ("jsonl", "", [], "no transcript column 'text'"),
    ],
)
def test_header_problems_stop_before_decoding(tmp_path, no_decoding, kind, header, overrides, expected):
    d = tmp_path / "m"
    d.mkdir()
    if kind == "jsonl":
        path = d / "m.jsonl"
        path.write_text(json.dumps({"audio": "a.wav", "sentence": "hi"}) + "\n")
    else:
        path = d / ("metadata.csv" if kind == "audiofolder" else "m.csv")
        cells = {"audio": "a.wav", "path": "a.wav", "text": "hi", "speaker": "bob", "accent": "y"}
        path.write_text(header + "\n" + ",".join(cells[c] for c in header.split(",")) + "\n")
    with pytest.raises(SourceError, match=re.escape(expected)):
        run_prepare(
            tmp_path, "--source", kind, "--path", str(d if kind == "audiofolder" else path), *overrides
        )


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty"),
        (b"audio,text\na.wav,ok\nb.wav," + b"x" * 200_000 + b"\n", "line 3: not readable as CSV"),
    ],
)
def test_unreadable_csv_names_the_line(tmp_path, no_decoding, content, expected):
    m = tmp_path / "m.csv"
    m.write_bytes(content)
    with pytest.raises(SourceError, match=expected):
        run_prepare(tmp_path, "--source", "csv", "--path", str(m))


def test_jsonl_line_that_is_not_an_object(tmp_path, no_decoding):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav", "text": "x"}\n["a.wav", "x"]\n')
    with pytest.raises(SourceError, match="line 2: a JSON list, not an object"):
        run_prepare(tmp_path, "--source", "jsonl", "--path", str(m))
    m.write_text('{"audio": "a.wav", "text": "caf\\udce9"}\n')
    with pytest.raises(SourceError, match="line 1: holds a lone surrogate"):
        run_prepare(tmp_path, "--source", "jsonl", "--path", str(m))
    m.write_text("\n\n")
    with pytest.raises(SourceError, match="is empty"):
        run_prepare(tmp_path, "--source", "jsonl", "--path", str(m))


# --- corrupt audio: a plain reason, the decoder's words in the DEBUG log -------------------------
def test_corrupt_audio_gets_a_plain_reason(tmp_path, caplog):
    d = tmp_path / "af"
    write_wav(d / "good.wav", tone(0.5))
    (d / "garbage.wav").write_bytes(b"\x00\xff" * 1000)
    (d / "zero.wav").write_bytes(b"")
    (d / "text.mp3").write_text("this is not audio\n" * 20)
    sf.write(d / "slow.wav", np.zeros(200, dtype=np.float32), 200)  # 1 s at 200 Hz: a damaged header
    names = ["good.wav", "garbage.wav", "zero.wav", "text.mp3", "slow.wav"]
    (d / "metadata.csv").write_text("file_name,text\n" + "".join(f"{n},t {i}\n" for i, n in enumerate(names)))
    with caplog.at_level(logging.DEBUG, logger="data_prep.prepare"):
        rep = run_prepare(tmp_path, "--source", "audiofolder", "--path", str(d), "--test_fraction", "0.5")
    assert rep["dropped"] == {"corrupt_audio": 4}
    examples = "\n".join(rep["dropped_examples"]["corrupt_audio"])
    assert examples.count("not a decodable audio file: truncated, corrupt or not audio") == 2
    assert "the file is empty (0 bytes)" in examples and "sample rate 200 Hz" in examples
    for internal in (".cpp", "torchcodec", "SingleStreamDecoder", "Invalid data"):
        assert internal not in examples
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("decoder error" in m and "garbage.wav" in m for m in debug)


def test_an_odd_sample_rate_is_resampled_cheaply():
    # 22051 Hz (one flipped bit from 22050) made torchaudio build a 16000 x 22051 kernel: 6 GB, 40 s
    from data_prep.prepare import MAX_DENSE_KERNEL, resample_ratio, to_canonical_audio

    for rate in (16_001, 22_051, 44_101, 767_999, 1_001):
        orig, new = resample_ratio(rate)
        assert orig * new <= 16 * MAX_DENSE_KERNEL and abs(new / orig * rate / 16_000 - 1) < 6e-4
    assert resample_ratio(44_100) == (44_100, 16_000)  # the usual rates stay exact
    audio = to_canonical_audio(tone(0.5, 22_051)[None], 22_051)
    assert abs(len(audio) - 8_000) <= 4
    spec = np.abs(np.fft.rfft(audio))
    assert abs(np.fft.rfftfreq(len(audio), 1 / 16_000)[spec.argmax()] - 220) < 3


# --- the generate corpus ----------------------------------------------------------------------
def test_blank_corpus_lines_are_counted(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("first line\n\n   \nsecond line\n...\nfirst line\r\n\n")
    lines = read_corpus(str(corpus))
    texts, counts = plan_texts(["train text"], lines, LeakageGuard([]))
    assert texts == ["train text", "first line", "second line"]
    assert counts["blank_lines"] == 3 and counts["empty"] == 1 and counts["duplicate"] == 1
    accounted = sum(counts[k] for k in ("blank_lines", "empty", "duplicate", "refused_protected", "allowed"))
    assert accounted == counts["train"] + counts["corpus"] == 8


def test_corpus_encoding(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("bonjour\nun café\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"corpus.txt, line 2: .*generate.text_corpus_encoding"):
        read_corpus(str(corpus))
    assert read_corpus(str(corpus), "latin-1") == ["bonjour", "un café"]


# --- splits named by the data: bad settings stop before any audio is decoded -----------------------
def test_a_split_value_the_map_lacks_is_named_with_the_fix(tmp_path, no_decoding):
    d = tmp_path / "src"
    write_wav(d / "a.wav", tone(0.3))
    (d / "m.csv").write_text("audio,text,split\na.wav,hello,train\na.wav,hi,validation\n")
    with pytest.raises(SourceError, match=r"\['validation'\] that prepare.split_map does not map") as e:
        run_prepare(
            tmp_path,
            "--source",
            "csv",
            "--path",
            str(d / "m.csv"),
            "--split_column",
            "split",
            "--split_map",
            "train=target_train",
        )
    assert "add a VALUE=ROLE item" in str(e.value) and "skip" in str(e.value)
    with pytest.raises(SourceError, match="no split name column 'part'.*set `prepare.split_column`"):
        run_prepare(
            tmp_path,
            "--source",
            "csv",
            "--path",
            str(d / "m.csv"),
            "--split_column",
            "part",
            "--split_map",
            "train=target_train",
        )


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["--role_sources", "target_train=a.csv", "target_train=b.csv"],
            "role 'target_train' is named twice",
        ),
        (["--role_sources", "train=a.csv"], "role 'train' is not one of: target_train"),
        (["--split_column", "split", "--split_map", "train=target_train", "train=source"], "named twice"),
        (["--split_column", "split", "--split_map", "train"], "is not `VALUE=ROLE`"),
        (["--split_column", "split"], "needs split_map"),
        (["--split_map", "train=target_train"], "set split_column"),
        (["--path", "m.csv", "--role_sources", "target_test=t.csv"], "leave path empty"),
    ],
)
def test_bad_split_settings_name_the_fix(tmp_path, no_decoding, overrides, expected):
    with pytest.raises(Exception, match=re.escape(expected)) as e:
        parse_args("prepare", ["--output_dir", str(tmp_path / "exp"), "--source", "csv", *overrides])
    assert "command line" in str(e.value) or "prepare:" in str(e.value)
    assert not written(tmp_path / "exp")


def test_bad_split_settings_in_a_yaml_file_are_listed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "prepare:\n  source: hub\n  path: x\n  role_sources: [target_test=test, target_test=validation]\n"
    )
    with pytest.raises(
        Exception, match=r"bad.yaml: prepare.role_sources: .* role 'target_test' is named twice"
    ):
        parse_args("prepare", ["--config", str(bad), "--output_dir", str(tmp_path / "exp")])
