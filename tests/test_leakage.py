"""The leakage guard: a test sentence is refused however it is spelled, anything else passes."""

import json

import pytest

from data_prep.leakage import LeakageGuard, normalize_text


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Turn LEFT!", "turn left"),
        ("  turn,\tleft  ", "turn left"),
        ("Don't stop.", "dont stop"),
        ("Don\u2019t stop.", "dont stop"),  # typographic apostrophe, common in corpora
        ("snake_case-words", "snake case words"),
        ("Call 911 now", "call 911 now"),
        ("Caf\u00e9 \uff21", "caf\u00e9 a"),  # NFKC folds the full-width letter
        ("?!...", ""),
    ],
)
def test_normalize_text(raw, normalized):
    assert normalize_text(raw) == normalized


def test_guard_refuses_test_texts_in_any_spelling_and_keeps_order():
    guard = LeakageGuard(["Please hold the line.", "Goodbye"])
    assert guard.is_protected("please hold the line") and guard.is_protected("PLEASE, hold the line!!")
    assert not guard.is_protected("please hold the line now")  # whole sentences, not word overlap
    texts = ["hello there", "goodbye.", "Please hold  the line", "thank you"]
    allowed, refused = guard.filter(texts)
    assert allowed == ["hello there", "thank you"]
    assert refused == ["goodbye.", "Please hold  the line"]


def test_an_empty_test_transcript_protects_nothing():
    guard = LeakageGuard(["", "  ...  ", "one"])
    assert len(guard) == 1
    assert not guard.is_protected("")
    assert guard.filter(["two", "ONE"]) == (["two"], ["ONE"])


def test_save_load_round_trip_and_dataset_dir(tmp_path):
    guard = LeakageGuard(["Hello, World", "second one"], splits=["target_test"])
    guard.save(tmp_path / "protected_texts.json")
    doc = json.loads((tmp_path / "protected_texts.json").read_text())
    assert doc == {"texts": ["hello world", "second one"], "splits": ["target_test"]}
    loaded = LeakageGuard.from_dataset_dir(tmp_path)
    assert loaded.is_protected("hello world!") and loaded.splits == ["target_test"]
    assert not loaded.is_protected("hello")


def test_missing_guard_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        LeakageGuard.from_dataset_dir(tmp_path)
