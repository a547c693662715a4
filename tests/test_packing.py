"""Window packing and the sampling plan (recipe.packing), on hand-made lengths and audio."""

from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset

from core import schema
from core.config import ConfigError
from recipe.packing import (
    EpochPacker,
    EpochWindowSampler,
    WindowDataset,
    concat_audio,
    draw_order,
    join_transcripts,
    pack_windows,
    packing_summary,
    split_oversized,
    use_packing,
    window_seconds,
)


def test_pack_windows_respects_both_limits_and_keeps_every_utterance_once():
    rng = np.random.default_rng(0)
    n = 200
    durations = rng.uniform(0.5, 6.0, n)
    tokens = rng.integers(2, 40, n)
    order = rng.permutation(n)
    windows = pack_windows(order, durations, tokens, max_seconds=28.0, gap_seconds=0.6, max_tokens=120)
    assert sorted(i for w in windows for i in w) == list(range(n))
    assert [i for w in windows for i in w] == list(order)  # next-fit keeps the draw order
    for w in windows:
        assert window_seconds(w, durations, 0.6) <= 28.0
        assert tokens[w].sum() <= 120
    # next-fit: a window was closed only because the next utterance did not fit
    for a, b in zip(windows, windows[1:], strict=False):
        nxt = b[0]
        assert (
            window_seconds(a, durations, 0.6) + 0.6 + durations[nxt] > 28.0
            or tokens[a].sum() + tokens[nxt] > 120
        )
    assert len(windows) < n / 4  # short utterances do share windows


def test_oversized_utterance_gets_its_own_window():
    windows = pack_windows(
        [0, 1, 2], [1.0, 40.0, 1.0], [1, 1, 1], max_seconds=28.0, gap_seconds=0.5, max_tokens=100
    )
    assert windows == [[0], [1], [2]]


def test_split_oversized_undoes_only_flagged_windows():
    out, n = split_oversized([[0, 1], [2, 3, 4], [5]], [False, True, True])
    assert out == [[0, 1], [2], [3], [4], [5]] and n == 1


def test_draw_order_permutation_and_weighted_proportions():
    rng = np.random.default_rng(1)
    assert sorted(draw_order(None, 10, rng)) == list(range(10))
    w = np.array([0.0, 1.0, 3.0, 6.0]) * 5000
    order = draw_order(w, 4, np.random.default_rng(2))
    assert len(order) == round(w.sum())
    freq = np.bincount(order, minlength=4) / len(order)
    np.testing.assert_allclose(freq, w / w.sum(), atol=0.01)
    assert np.array_equal(order, draw_order(w, 4, np.random.default_rng(2)))  # seeded
    with pytest.raises(ValueError):
        draw_order(np.array([1.0, -1.0]), 2, rng)


def test_concat_audio_and_transcripts():
    a, b = np.ones(100, np.float32), 2 * np.ones(50, np.float32)
    x = concat_audio([a, b], gap_samples=10)
    assert len(x) == 160 and np.all(x[100:110] == 0) and x[-1] == 2
    assert join_transcripts([" hello ", "", "world."]) == "hello world."


def test_window_dataset_decodes_and_joins(tmp_path):
    rows = [
        schema.make_row(id=f"u{i}", samples=np.full(1600 * (i + 1), 0.1, np.float32), text=f"word{i}")
        for i in range(3)
    ]
    ds = Dataset.from_list(rows, features=schema.features())
    wd = WindowDataset(ds, [[0, 2], [1]], gap_seconds=0.5)
    ex = wd[0]
    assert len(ex["audio"]) == 1600 + 8000 + 4800 and ex["text"] == "word0 word2" and ex["n_utterances"] == 2
    assert wd[(1, 0)]["text"] == "word1 word0"  # the window itself, as EpochWindowSampler hands it
    assert wd.lengths == pytest.approx([0.1 + 0.5 + 0.3, 0.2])
    s = packing_summary(wd.windows, [0.1, 0.2, 0.3], 0.5, 30.0)
    assert (
        s["windows"] == 2 and s["utterances"] == 3 and s["speech_fill"] == pytest.approx(0.6 / 60, abs=1e-3)
    )


def test_packing_needs_a_fixed_window():
    ctc = SimpleNamespace(packable=False, kind="ctc")
    whisper = SimpleNamespace(packable=True, kind="whisper", max_input_seconds=30.0)
    with pytest.raises(ConfigError, match="packing"):
        use_packing(ctc, SimpleNamespace(packing="on"), np.ones(3))
    assert use_packing(whisper, SimpleNamespace(packing="auto"), np.array([2.0, 3.0, 40.0]))
    assert not use_packing(whisper, SimpleNamespace(packing="auto"), np.array([20.0, 25.0]))


class CharLabels:
    """A stand-in for the ASR model's label arithmetic: one token per character, 3 per window."""

    max_input_seconds = 30.0

    def label_limit(self, targs):
        return targs.max_label_tokens

    def label_overhead(self):
        return 3

    def label_lengths(self, texts):
        return np.array([len(t) + 3 for t in texts])


def test_windows_are_packed_afresh_every_epoch_at_a_fixed_count():
    rng = np.random.default_rng(0)
    n = 60
    pool = Dataset.from_dict({"duration": rng.uniform(0.5, 6.0, n), "text": [f"utt{i}" for i in range(n)]})
    targs = SimpleNamespace(
        unpacked_share=0.2, pack_max_seconds=28.0, pack_gap_seconds=0.6, max_label_tokens=448
    )
    packer = EpochPacker(CharLabels(), pool, None, targs, seed=7)
    e0, e1 = packer.windows(0), packer.windows(1)
    # Every epoch has the first epoch's number of windows: the Trainer's steps per epoch hold.
    assert len(e0) == len(e1) == packer.n_windows < n / 2
    assert sorted(i for w in e0 for i in w) == list(range(n))  # epoch 0 is one pass over the rows
    assert sorted(map(tuple, e0)) != sorted(map(tuple, e1))  # other neighbours in another epoch
    assert EpochPacker(CharLabels(), pool, None, targs, seed=7).windows(1) == e1  # seeded by (seed, epoch)
    sampler = EpochWindowSampler(packer)
    assert len(sampler) == packer.n_windows and list(sampler) == [tuple(w) for w in e0]
    sampler.set_epoch(1)
    assert list(sampler) == [tuple(w) for w in e1]
