"""The train stage's data (recipe.data): mixing shares, candidate selection, label normalization."""

import numpy as np
import pytest
from datasets import Dataset
from tiny_asr import write_prepared

from core import files, schema
from core.config import ConfigError, RunArgs
from recipe.data import (
    TRAIN_COLUMNS,
    load_parts,
    mix_weights,
    normalized_transcripts,
    random_selection,
    select_candidates,
)
from recipe.train_args import TrainArgs


def test_mix_weights_natural_and_ratios():
    masses = {"real": np.ones(10), "candidates": np.ones(30)}
    assert mix_weights(masses, {"real": 0, "candidates": 0}) is None
    w = mix_weights(masses, {"real": 0.5, "candidates": 0.5})
    assert (
        w.sum() == pytest.approx(40)
        and w[:10].sum() == pytest.approx(20)
        and w[10:].sum() == pytest.approx(20)
    )
    weighted = {"real": np.ones(10), "candidates": np.array([0.0, 2.0, 1.0])}
    np.testing.assert_allclose(mix_weights(weighted, {}), [1] * 10 + [0, 2, 1])
    w = mix_weights(weighted, {"real": 3, "candidates": 1})
    np.testing.assert_allclose(w[10:] / w[10:].sum(), [0, 2 / 3, 1 / 3])
    assert w[:10].sum() / w.sum() == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="source"):
        mix_weights(masses, {"source": 1.0})


def test_random_arm_is_size_matched_and_seeded():
    scored = {"accepted": [True, False, True, False, False, True, False, False], "weight": [1.0] * 8}

    class Scored(dict):
        column_names = list(scored)

        def __len__(self):
            return 8

    idx, mass = select_candidates(Scored(scored), "random", np.random.default_rng(0))
    assert len(idx) == 3 and len(set(idx)) == 3 and np.all(mass == 1)
    again, _ = select_candidates(Scored(scored), "random", np.random.default_rng(0))
    assert np.array_equal(idx, again)
    idx, mass = select_candidates(Scored(scored), "weighted", np.random.default_rng(0))
    assert len(idx) == 8 and mass.sum() == 8


def test_random_arm_draws_uniformly_as_many_as_accepted_within_each_text():
    rng = np.random.default_rng(0)
    groups = np.repeat(["a", "b", "c", "d"], [30, 12, 5, 4]).astype(object)
    accepted = np.zeros(len(groups), bool)
    for g, k in {"a": 6, "b": 2, "c": 5}.items():  # c: every rendering accepted; d: none
        accepted[rng.choice(np.flatnonzero(groups == g), k, replace=False)] = True
    hits = np.zeros(len(groups))
    for seed in range(400):
        idx = random_selection(accepted, groups, np.random.default_rng(seed))
        assert np.all(np.diff(idx) > 0)
        for g in "abcd":
            inside = np.flatnonzero(groups == g)
            assert len(np.intersect1d(idx, inside)) == accepted[inside].sum()  # the same texts covered
        hits[idx] += 1
    # uniform within a text: every rendering of `a` drawn about 6/30 of the time, not the accepted ones
    a = np.flatnonzero(groups == "a")
    np.testing.assert_allclose(hits[a] / 400, 6 / 30, atol=0.07)
    assert hits[accepted & (groups == "a")].mean() / 400 == pytest.approx(6 / 30, abs=0.05)
    assert len(random_selection(accepted, None, np.random.default_rng(0))) == accepted.sum()


def test_normalized_transcripts_keep_rows_and_schema():
    rows = Dataset.from_dict(
        {
            "id": ["a", "b"],
            "audio": [b"RIFF", b"RIFF"],
            "text": ["Ninety.", "Press two to call this number, please..."],
            "duration": [0.8, 2.0],
            "origin": ["real", "real"],
            "generator": ["{}", "{}"],
        }
    )
    out = normalized_transcripts(rows, "en", "real")
    # spelled-out numbers become digits, as Whisper writes them; case and punctuation go
    assert list(out["text"]) == ["90", "press 2 to call this number please"]
    assert (
        out.column_names == TRAIN_COLUMNS
        and list(out["id"]) == ["a", "b"]
        and list(out["audio"]) == list(rows["audio"])
    )


def test_load_parts_reads_the_prepared_splits_and_needs_the_filter(tmp_path):
    texts = ["Hello, World.", "Good Morning!", "Goodbye."]
    rows = [
        schema.make_row(id=f"u{i}", samples=np.zeros(1600, np.float32), text=t) for i, t in enumerate(texts)
    ]
    write_prepared(tmp_path, rows, rows[:1], source=rows[:2])
    run = RunArgs(output_dir=str(tmp_path))
    targs = TrainArgs(use_candidates="none", use_source=True, normalize_labels=True)
    parts = load_parts(run, targs, np.random.default_rng(0))
    assert [(p.name, len(p.rows)) for p in parts] == [("real", 3), ("source", 2)]
    assert list(parts[0].rows["text"]) == ["hello world", "good morning", "goodbye"]
    assert parts[0].rows.column_names == TRAIN_COLUMNS and np.all(parts[0].mass == 1)
    with pytest.raises(FileNotFoundError, match="run the filter stage first"):
        load_parts(run, TrainArgs(use_candidates="accepted"), np.random.default_rng(0))
    # augment_real: the generate stage's copies of target_train join the real part, not the candidates
    with pytest.raises(FileNotFoundError, match="copies_per_utterance"):
        load_parts(run, TrainArgs(use_candidates="none", augment_real=True), np.random.default_rng(0))
    copies = [dict(r, id=f"{r['id']}-pert0", origin="perturbed", parent_id=r["id"]) for r in rows]
    files.atomic_save(
        Dataset.from_list(copies, features=schema.features()), tmp_path / "candidates" / "real_augmented"
    )
    parts = load_parts(run, TrainArgs(use_candidates="none", augment_real=True), np.random.default_rng(0))
    assert [(p.name, len(p.rows)) for p in parts] == [("real", 6)]
    assert sorted(parts[0].rows["origin"]) == ["perturbed"] * 3 + ["real"] * 3


def test_a_filter_that_accepted_nothing_leaves_an_empty_candidate_part(tmp_path, caplog):
    """datasets cannot load an empty saved dataset back: train must read the filter's count, not crash."""
    rows = [schema.make_row(id=f"u{i}", samples=np.zeros(1600, np.float32), text="hi") for i in range(3)]
    write_prepared(tmp_path, rows, rows[:1])
    filter_dir = tmp_path / "filter"
    files.write_json({"n_accepted": 0, "n_candidates": 12}, filter_dir / "filter_report.json")
    run = RunArgs(output_dir=str(tmp_path))
    parts = load_parts(run, TrainArgs(use_candidates="accepted"), np.random.default_rng(0))
    assert [(p.name, len(p.rows)) for p in parts] == [("real", 3), ("candidates", 0)]
    assert "accepted no candidate" in caplog.text
    w = mix_weights({p.name: p.mass for p in parts}, {"real": 0.5, "candidates": 0.5})
    assert np.all(np.isfinite(w)) and w.sum() > 0
