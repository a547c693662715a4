"""Fuzz prepare with a seeded folder of damaged audio files and manifests.

Whatever the damage, prepare must either write a report in which every listed row is kept or
dropped for a named reason, or stop with a `SourceError`/`BadInput` that names the file; never
another exception (a traceback for the user). With `on_error: raise` nothing may be written.
Seeds are fixed so a failure reproduces; the files are tiny so all trials take a few seconds.
"""

import csv
import io
import json
import struct
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, written

from core.config import parse_args
from data_prep.prepare import BadInput, prepare
from data_prep.sources import SourceError, read_source

SEEDS = (0, 1, 2)
TIME_BUDGET_S = 20.0  # the whole module; each trial is a fraction of a second on the 2-core box


def wav_bytes(seconds: float, rate: int, seed: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, rate, seed=seed), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def huge_header(rng: np.random.Generator) -> bytes:
    """A WAV header that claims far more than the file holds, or absurd formats."""
    good = wav_bytes(0.2, 16_000, int(rng.integers(1000)))
    kind = int(rng.integers(4))
    if kind == 0:  # RIFF and data sizes of 4 GiB over a 6 kB file
        b = bytearray(good)
        b[4:8] = struct.pack("<I", 0xFFFFFFFF)
        b[40:44] = struct.pack("<I", 0xFFFFFFFF)
        return bytes(b)
    if kind == 1:  # 65535 channels at 4 GHz
        b = bytearray(good)
        b[22:24] = struct.pack("<H", 0xFFFF)
        b[24:28] = struct.pack("<I", 0xFFFFFFF0)
        return bytes(b)
    if kind == 2:  # a junk chunk claiming 2 GiB before `fmt `
        return good[:12] + b"JUNK" + struct.pack("<I", 0x7FFFFFF0) + bytes(64) + good[12:]
    return bytes(1 << 20) + good  # a megabyte of zeros before the header


def damaged_audio(rng: np.random.Generator, i: int) -> tuple[str, bytes]:
    """(file name, content) of one damaged or odd audio file, chosen by ``rng``."""
    seed = int(rng.integers(1 << 16))
    good = wav_bytes(float(rng.uniform(0.1, 0.4)), int(rng.choice([8_000, 16_000, 22_050, 44_100])), seed)
    kind = int(rng.integers(9))
    ext = str(rng.choice([".wav", ".flac", ".mp3", ".ogg", ".txt", ""]))
    if kind == 0:  # truncated anywhere, header included
        return f"trunc{i}.wav", good[: int(rng.integers(0, len(good)))]
    if kind == 1:  # random bytes under an audio extension
        return f"noise{i}{ext}", rng.bytes(int(rng.integers(1, 4096)))
    if kind == 2:  # a good file under the wrong extension
        return f"renamed{i}{ext}", good if rng.random() < 0.5 else wav_bytes(0.2, 16_000, seed, fmt="FLAC")
    if kind == 3:
        return f"huge{i}.wav", huge_header(rng)
    if kind == 4:  # random bytes written over part of a good file
        b = bytearray(good)
        start = int(rng.integers(0, len(b)))
        n = int(rng.integers(1, 200))
        b[start : start + n] = rng.bytes(min(n, len(b) - start))
        return f"flipped{i}.wav", bytes(b)
    if kind == 5:
        return f"zero{i}.wav", b""
    if kind == 6:  # float samples with NaN and inf
        x = tone(0.2, 16_000, seed=seed)
        x[rng.integers(0, len(x), 3)] = [np.nan, np.inf, -np.inf]
        buf = io.BytesIO()
        sf.write(buf, x, 16_000, format="WAV", subtype="FLOAT")
        return f"nan{i}.wav", buf.getvalue()
    if kind == 7:  # a text file pretending to be audio
        return f"text{i}.wav", ("RIFF WAVE fmt data " * int(rng.integers(1, 50))).encode()
    return f"good{i}{ext or '.wav'}", good


ODD_TEXTS = [
    "turn left",
    "",
    "   ",
    "naïve café",
    "עברית ومرحبا",
    "emoji 🎉 here",
    'quote " and, comma',
    "tab\there",
    "nul\x00inside",
    "x" * 2000,
]
OUTSIDE_PATHS = ["../outside.wav", "/etc/passwd", "sub/../../x.wav"]
ODD_PATHS = [*OUTSIDE_PATHS, "", "missing.wav", "a" * 300 + ".wav", "."]


def build_source(root, rng: np.random.Generator, kind: str, encoding: str) -> tuple[object, list[dict]]:
    """A folder of damaged audio and a manifest of ``kind`` in ``encoding`` naming it, plus odd rows.
    Returns (the `path` to give prepare, the data rows)."""
    root.mkdir(parents=True)
    rows = []
    for i in range(int(rng.integers(12, 20))):
        name, content = damaged_audio(rng, i)
        (root / name).write_bytes(content)
        rows.append(
            {
                "audio": name,
                "text": str(rng.choice(ODD_TEXTS[:1] * 4 + ODD_TEXTS)),
                "speaker": ("s0", "José", "Zoë")[i % 3],
            }
        )
    (root / "adir.wav").mkdir()  # a folder where a file should be
    rows.append({"audio": "adir.wav", "text": "a folder", "speaker": "s0"})
    for p in rng.choice(ODD_PATHS, size=4, replace=False):
        rows.append({"audio": str(p), "text": "odd path", "speaker": "s1"})
    rows.append(dict(rows[0]))  # a duplicate id (the id is the file name)
    for r in rows:
        r["id"] = r["audio"].replace("/", "_")[:50] or "noname"
    order = rng.permutation(len(rows))
    rows = [rows[j] for j in order]
    if kind == "jsonl":
        path = root / "manifest.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=bool(rng.integers(2))) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        col = "file_name" if kind == "audiofolder" else "audio"
        w = csv.DictWriter(buf, fieldnames=[col, "text", "speaker", "id"])
        w.writeheader()
        w.writerows(
            {col: r["audio"], "text": r["text"], "speaker": r["speaker"], "id": r["id"]} for r in rows
        )
        text = buf.getvalue()
        path = root / ("metadata.csv" if kind == "audiofolder" else "manifest.csv")
    path.write_bytes(text.encode(encoding, errors="replace"))
    return (root if kind == "audiofolder" else path), rows


def damage_manifest(path, rng: np.random.Generator) -> None:
    """Cut the manifest mid-line or splice random bytes into it."""
    data = path.read_bytes()
    at = int(rng.integers(len(data) // 3, len(data)))
    if rng.random() < 0.5:
        path.write_bytes(data[:at])
    else:
        path.write_bytes(data[:at] + rng.bytes(int(rng.integers(1, 64))) + data[at:])


CASES = [
    # (manifest kind, the file's encoding, prepare.encoding; None: the file is readable as declared)
    ("csv", "utf-8", "utf-8"),
    ("jsonl", "utf-8-sig", "utf-8"),
    ("audiofolder", "utf-16", "utf-16"),
    ("csv", "cp1252", "cp1252"),
    ("audiofolder", "latin-1", "utf-8"),  # the wrong encoding: a clear SourceError
]


def run(tmp_path, path, kind, encoding, on_error):
    out = tmp_path / f"exp-{on_error}"
    argv = [
        "--output_dir",
        str(out),
        "--source",
        kind,
        "--path",
        str(path),
        "--encoding",
        encoding,
        "--on_error",
        on_error,
        "--split_by",
        "utterance",
    ]
    run_args, args = parse_args("prepare", argv)
    try:
        return out, args, prepare(run_args, args), None
    except (SourceError, BadInput) as e:  # the two errors that explain themselves; any other fails
        return out, args, None, e


@pytest.fixture(scope="module")
def clock():
    start = time.monotonic()
    yield
    assert time.monotonic() - start < TIME_BUDGET_S, "the fuzz test outgrew its time budget"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))
def test_damaged_sources_are_accounted_for(tmp_path, clock, seed, case):
    kind, file_encoding, encoding = case
    rng = np.random.default_rng([seed, CASES.index(case)])
    path, rows = build_source(tmp_path / "src", rng, kind, file_encoding)
    damaged = rng.random() < 0.3
    if damaged:
        damage_manifest(path / "metadata.csv" if kind == "audiofolder" else path, rng)

    out, args, report, error = run(tmp_path, path, kind, encoding, "skip")
    assert (report is None) == (file_encoding == "latin-1") or damaged or "no usable" in str(error)
    if report is None:
        # only a manifest problem (wrong encoding, damaged text) or nothing usable may stop a skip run
        msg = str(error)
        assert isinstance(error, SourceError) and ("line" in msg or "no usable utterance" in msg), msg
        assert not written(out)
        if file_encoding == "latin-1":  # José in Latin-1, read as UTF-8
            assert "prepare.encoding" in msg
        elif not damaged:
            assert "no usable utterance" in msg
    else:
        listed = len(rows) if not damaged else len(list(read_source(args)))
        assert report["listed"] == listed
        assert sum(report["kept"].values()) + sum(report["dropped"].values()) == listed
        if not damaged:
            outside = sum(r["audio"] in OUTSIDE_PATHS for r in rows)
            assert report["dropped"].get("path_outside_folder", 0) == outside
        assert set(report["dropped"]) <= set(report["dropped_examples"]) | {"over_max_train_utterances"}

    # on_error: raise stops at the first bad row and writes nothing
    clean = report is not None and not report["dropped"]
    out, _, report, error = run(tmp_path, path, kind, encoding, "raise")
    if clean:  # (a damaged manifest can leave only good rows)
        assert error is None and report["dropped"] == {}
    else:
        assert report is None and error is not None
        assert not written(out)
