"""The ablation: its statistics from hand-made decoding records, and what it asks each stage to
run (filter per seed, the same real share in every arm, duplicate arms refused), with the stage
runs replaced by a fake that writes their outputs (no training)."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset
from scipy import stats
from tiny_asr import write_prepared

import recipe.ablation as ra
from core import files, schema
from core.config import ConfigError, parse_args
from core.paths import ExperimentPaths
from recipe.ablation import REFERENCE_ARM, ablation, plot, summarize, to_markdown
from recipe.ablation_args import ARMS
from recipe.data import anti_selection, load_parts, select_candidates, training_pool
from recipe.metrics.errors import paired_bootstrap


def records(n, error_rate, seed):
    """n utterances of 5 reference words; each word is wrong with probability error_rate."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ref = ["w"] * 5
        hyp = ["x" if rng.random() < error_rate else "w" for _ in ref]
        out.append({"id": f"u{i}", "ref_norm": " ".join(ref), "hyp_norm": " ".join(hyp)})
    return out


def word_errors(recs):
    return np.array([sum(w != "w" for w in r["hyp_norm"].split()) for r in recs])


def test_summary_means_cis_and_seed_level_pvalues(tmp_path):
    results = {
        "zero_shot": [records(200, 0.40, 0)],
        "real_only": [records(200, 0.30, s) for s in (1, 2, 3)],
        "real+random": [records(200, 0.29, s) for s in (4, 5, 6)],
        REFERENCE_ARM: [records(200, 0.15, s) for s in (7, 8, 9)],
    }
    s = summarize(results, n_boot=1000, seed=0)
    arms = s["arms"]
    assert arms["zero_shot"]["n_seeds"] == 1 and arms["real_only"]["n_seeds"] == 3
    assert arms["zero_shot"]["wer_mean"] == pytest.approx(0.40, abs=0.04)
    for a in arms.values():
        assert a["wer_ci"][0] <= a["wer_mean"] <= a["wer_ci"][1]
        assert a["wer_mean"] == pytest.approx(np.mean(a["wer_per_seed"]))
    comps = s[f"{REFERENCE_ARM}_vs"]
    assert set(comps) == {"zero_shot", "real_only", "real+random"}
    for c in comps.values():  # the reference arm is clearly better than every other
        assert c["delta"] < -0.1 and c["ci_high"] < 0 and c["p_value"] < 0.01
    md = to_markdown(s)
    assert REFERENCE_ARM in md and "real+random" in md and "Welch" in md
    plot(s, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_seed_level_ci_is_wider_than_the_utterance_bootstrap_and_p_is_welchs():
    """Seeds that disagree: pooling them and resampling utterances only (the old test) is far too
    sure; the hierarchical bootstrap's CI is wider, and p is Welch's on the per-seed WERs."""
    ref_rates, arm_rates = (0.10, 0.22, 0.14, 0.30, 0.18), (0.20, 0.12, 0.28, 0.16, 0.25)
    results = {
        "zero_shot": [records(300, 0.35, 99)],
        "real_only": [records(300, r, 10 + k) for k, r in enumerate(arm_rates)],
        REFERENCE_ARM: [records(300, r, 20 + k) for k, r in enumerate(ref_rates)],
    }
    s = summarize(results, n_boot=2000, seed=0)
    c = s[f"{REFERENCE_ARM}_vs"]["real_only"]
    ref, arm = (np.array([word_errors(r) for r in results[a]]) for a in (REFERENCE_ARM, "real_only"))
    ref_len = np.full(300, 5 * len(ref_rates))
    pooled = paired_bootstrap(arm.sum(0), ref.sum(0), ref_len, n_boot=2000, seed=0)
    assert c["ci_high"] - c["ci_low"] > 2 * (pooled["ci_high"] - pooled["ci_low"])
    assert c["ci_low"] < 0 < c["ci_high"]
    per_seed = {a: s["arms"][a]["wer_per_seed"] for a in s["arms"]}
    welch = stats.ttest_ind(per_seed[REFERENCE_ARM], per_seed["real_only"], equal_var=False)
    assert c["p_value"] == pytest.approx(welch.pvalue) and c["welch_t"] == pytest.approx(welch.statistic)
    # zero-shot is decoded once: a constant, so Welch's test is the one-sample test against it
    one = stats.ttest_1samp(per_seed[REFERENCE_ARM], per_seed["zero_shot"][0])
    assert s[f"{REFERENCE_ARM}_vs"]["zero_shot"]["p_value"] == pytest.approx(one.pvalue)


def test_equal_arms_are_not_significant():
    results = {
        "real_only": [records(300, 0.2, s) for s in (1, 2)],
        REFERENCE_ARM: [records(300, 0.2, s) for s in (3, 4)],
    }
    c = summarize(results, n_boot=1000, seed=0)[f"{REFERENCE_ARM}_vs"]["real_only"]
    assert c["p_value"] > 0.05 and c["ci_low"] < 0 < c["ci_high"]


def test_runs_must_decode_the_same_utterances():
    results = {"real_only": [records(10, 0.2, 1)], REFERENCE_ARM: [records(9, 0.2, 2)]}
    with pytest.raises(ValueError, match="other utterances"):
        summarize(results, n_boot=10, seed=0)


# ---------------------------------------------------------------------------------------------
# What the ablation runs, with a fake in place of the stages
# ---------------------------------------------------------------------------------------------
def rows(prefix, n, origin="real"):
    return [
        schema.make_row(
            id=f"{prefix}{i}",
            samples=np.zeros(1600 * (1 + i % 3), np.float32),
            text=f"{prefix} {i}",
            origin=origin,
            parent_id=f"tr{i}" if origin == "perturbed" else "",
        )
        for i in range(n)
    ]


def save(rows_, path):
    files.atomic_save(Dataset.from_list(rows_, features=schema.features()), path)


def write_filter(filter_dir, candidates, seed, mode):
    """A filter stage's output: every candidate scored (log ratio, weight, sampled per text in three
    texts), a seed-dependent accepted set."""
    n = len(candidates)
    rng = np.random.default_rng(seed)
    accepted = np.ones(n, bool) if mode == "weights" else rng.random(n) < 0.5
    accepted[0] = True
    scored = Dataset.from_list(candidates, features=schema.features())
    columns = [
        ("accepted", accepted.tolist()),
        ("weight", [1.0 + (i % 3) for i in range(n)]),
        ("log_ratio", rng.normal(size=n).tolist()),
        ("sample_group", [f"text {i % 3}" for i in range(n)]),
    ]
    for name, values in columns:
        scored = scored.add_column(name, values)
    files.atomic_save(scored, filter_dir / "scored")
    save([r for r, a in zip(candidates, accepted, strict=True) if a], filter_dir / "accepted")
    report = {"mode": mode, "n_accepted": int(accepted.sum()), "n_candidates": n}
    files.write_json(report, filter_dir / "filter_report.json")


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """Prepared data, candidates, copies of target_train and a fake runner that records every
    stage command and writes what that stage would."""
    exp = tmp_path / "exp"
    test = rows("te", 6)
    write_prepared(exp, rows("tr", 4), test)
    candidates = rows("cand", 12, origin="synthetic")
    save(candidates, exp / "candidates" / "dataset")
    save(rows("tr", 4, origin="perturbed"), exp / "candidates" / "real_augmented")
    write_filter(exp / "filter", candidates, 0, "reject")  # the experiment's own filter run
    calls, state = [], {"mode": "reject"}

    def fake_run(cmd):
        module, argv = cmd[2], cmd[3:]
        out = Path(argv[argv.index("--output_dir") + 1])
        seed = int(argv[argv.index("--seed") + 1])
        calls.append((module, argv))
        if module == "data_prep.filter":
            write_filter(ExperimentPaths.of(out).filter, candidates, seed, state["mode"])
            return
        paths = ExperimentPaths.of(out)
        hyps = paths.eval("zero_shot") if module == "recipe.evaluate" else paths.final_eval("target_test")
        recs = [{"id": r["id"], "ref_norm": "a b", "hyp_norm": "a b" if seed % 2 else "a c"} for r in test]
        hyps.mkdir(parents=True, exist_ok=True)
        (hyps / "hyps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        if module == "recipe.train":  # what a real training run leaves besides its reports
            (paths.train / "checkpoint-10").mkdir(parents=True)
            (paths.train / "checkpoint-10" / "optimizer.pt").write_bytes(b"x" * 100)
            (paths.train / "model.safetensors").write_bytes(b"x" * 100)
            (paths.train / "train_report.json").write_text("{}")

    monkeypatch.setattr(ra, "_run", fake_run)
    return SimpleNamespace(root=exp, calls=calls, state=state)


def run_ablation(exp, *argv):
    run, args = parse_args("ablation", ["--output_dir", str(exp), "--bootstrap_samples", "50", *argv])
    return ablation(run, args, None)


def value(argv, key):
    return argv[argv.index(key) + 1]


@pytest.mark.parametrize("keep", [False, True])
def test_trained_arms_weights_are_deleted_after_their_decode_unless_kept(experiment, keep):
    run_ablation(experiment.root, "--seeds", "1", "--arms", "real_only", "--keep_models", str(keep).lower())
    train = ExperimentPaths.of(experiment.root / "ablation" / "real_only" / "seed0").train
    assert (train / "train_report.json").is_file()
    assert (train / "model.safetensors").exists() == keep
    assert (train / "checkpoint-10").exists() == keep


def test_the_filter_is_rerun_for_every_seed_and_each_seed_trains_on_its_own(experiment):
    run_ablation(experiment.root, "--seeds", "2", "--arms", "real_only", "real+random", "real+accepted")
    filters = [argv for module, argv in experiment.calls if module == "data_prep.filter"]
    assert sorted(value(a, "--seed") for a in filters) == ["0", "1"]
    outputs = {value(a, "--seed"): ExperimentPaths.of(value(a, "--output_dir")).filter for a in filters}
    assert len(set(outputs.values())) == 2
    for a in filters:  # the experiment's data and candidates, written under the ablation folder
        assert value(a, "--data_dir") == str(experiment.root / "data")
        assert value(a, "--candidates_dir") == str(experiment.root / "candidates" / "dataset")
        assert Path(value(a, "--output_dir")).is_relative_to(experiment.root / "ablation")
    trains = [argv for module, argv in experiment.calls if module == "recipe.train"]
    assert len(trains) == 3 * 2
    for a in trains:
        if value(a, "--use_candidates") != "none":
            assert value(a, "--filter_dir") == str(outputs[value(a, "--seed")])
    summary = json.loads((experiment.root / "ablation" / "ablation.json").read_text())
    assert set(summary["settings"]["filter_per_seed"]) == {"0", "1"}


def test_every_trained_arm_draws_the_same_share_of_real_data(experiment):
    run_ablation(experiment.root, "--seeds", "1")  # the default share, 0.5
    no_guards = SimpleNamespace(length_problems=lambda durations, texts, targs: {})
    shares, real_origins = {}, {}
    for module, argv in experiment.calls:
        if module != "recipe.train":
            continue
        run, targs, _ = parse_args("train", argv)
        parts = load_parts(run, targs, np.random.default_rng(0))
        pool = training_pool(no_guards, parts, targs)
        n_real = len(pool.kept["real"])
        weights = pool.weights if pool.weights is not None else np.ones(len(pool.rows))
        shares[targs.use_candidates] = weights[:n_real].sum() / weights.sum()
        real_origins[targs.use_candidates] = sorted(set(parts[0].rows["origin"]))
    assert set(shares) == {"none", "all", "random", "accepted", "weighted", "anti"}
    assert shares.pop("none") == 1.0
    assert shares == pytest.approx(dict.fromkeys(shares, 0.5))
    # every arm's real part is target_train plus its perturbed copies (augment_real)
    assert all(o == ["perturbed", "real"] for o in real_origins.values())
    summary = json.loads((experiment.root / "ablation" / "ablation.json").read_text())
    assert summary["settings"]["mix_real"] == 0.5 and summary["settings"]["augment_real"] is True
    assert "50% of draws from the real data" in (experiment.root / "ablation" / "ablation.md").read_text()


def test_arms_that_would_train_on_the_same_data_are_refused(experiment):
    experiment.state["mode"] = "weights"  # every candidate accepted
    with pytest.raises(
        ConfigError, match=r"real\+all.*real\+random.*real\+accepted.*real\+anti.*filter.mode: reject"
    ):
        run_ablation(experiment.root, "--seeds", "2")
    assert not [m for m, _ in experiment.calls if m == "recipe.train"]  # refused before any training
    # without the duplicates the same filter output is fine
    run_ablation(experiment.root, "--seeds", "2", "--arms", "real_only", "real+accepted", "real+weighted")


# ---------------------------------------------------------------------------------------------
# real+anti: the lowest ratios, size-matched to the accepted set, per text when grouped
# ---------------------------------------------------------------------------------------------
def test_anti_takes_the_lowest_ratios_as_many_as_accepted():
    log_ratio = np.array([0.5, -2.0, 3.0, -1.0, 0.0, -3.0, 2.0])
    accepted = np.array([0, 0, 1, 0, 1, 0, 1], bool)
    np.testing.assert_array_equal(anti_selection(log_ratio, accepted), [1, 3, 5])  # -2, -1, -3
    # ties go by row order: deterministic
    np.testing.assert_array_equal(anti_selection(np.zeros(5), np.array([1, 1, 0, 0, 0], bool)), [0, 1])
    assert len(anti_selection(log_ratio, np.zeros(7, bool))) == 0


def test_anti_is_size_matched_within_each_text_when_grouped():
    rng = np.random.default_rng(0)
    groups = np.repeat(["a", "b", "c", "d"], [30, 12, 5, 1]).astype(object)
    log_ratio = rng.normal(size=len(groups))
    accepted = np.zeros(len(groups), bool)
    for g, k in {"a": 6, "b": 2, "c": 5, "d": 1}.items():  # c and d: every rendering accepted
        accepted[rng.choice(np.flatnonzero(groups == g), k, replace=False)] = True
    idx = anti_selection(log_ratio, accepted, groups)
    assert len(idx) == accepted.sum() and np.all(np.diff(idx) > 0)
    for g in "abcd":
        inside = np.flatnonzero(groups == g)
        k = int(accepted[inside].sum())
        chosen = np.intersect1d(idx, inside)
        assert len(chosen) == k  # the same count, so the same texts covered
        np.testing.assert_array_equal(
            chosen, np.sort(inside[np.argsort(log_ratio[inside], kind="stable")[:k]])
        )
    # ungrouped, the same candidates would give the globally lowest instead
    assert not np.array_equal(idx, anti_selection(log_ratio, accepted))


def test_select_candidates_anti_reads_the_filters_columns():
    scored = Dataset.from_dict({
        "accepted": [True, False, True, False, False, True],
        "log_ratio": [2.0, -1.0, 1.0, -5.0, 0.0, 3.0],
        "sample_group": ["x", "x", "x", "y", "y", "y"],
    })  # fmt: skip
    idx, mass = select_candidates(scored, "anti", np.random.default_rng(0))
    np.testing.assert_array_equal(idx, [1, 2, 3])  # x: its two lowest (-1, 1); y: its lowest (-5)
    assert mass.tolist() == [1.0, 1.0, 1.0]
    # an older filter output (no sample_group) sampled as one group: the lowest three overall
    idx, _ = select_candidates(scored.remove_columns("sample_group"), "anti", np.random.default_rng(0))
    np.testing.assert_array_equal(idx, [1, 3, 4])
    with pytest.raises(ValueError, match="no `log_ratio` column"):
        select_candidates(scored.remove_columns("log_ratio"), "anti", np.random.default_rng(0))


def test_real_anti_is_a_default_arm_and_trains_on_the_lowest_ratios_of_its_seeds_filter(experiment):
    assert "real+anti" in ARMS
    run_ablation(experiment.root, "--seeds", "2", "--arms", "real+anti", "real+accepted")
    trains = [argv for module, argv in experiment.calls if module == "recipe.train"]
    anti = [a for a in trains if value(a, "--use_candidates") == "anti"]
    assert len(anti) == 2
    for argv in anti:
        run, targs, _ = parse_args("train", argv)
        scored = schema.load_split(Path(targs.filter_dir) / "scored")
        parts = load_parts(run, targs, np.random.default_rng(0))
        assert parts[1].name == "candidates" and len(parts[1].rows) == sum(scored["accepted"])
        lr, groups = np.array(scored["log_ratio"]), np.array(scored["sample_group"])
        for g in set(groups):
            chosen = [i for i in parts[1].rows["id"] if groups[scored["id"].index(i)] == g]
            k = int(np.sum(np.array(scored["accepted"])[groups == g]))
            lowest = np.array(scored["id"])[groups == g][np.argsort(lr[groups == g])[:k]]
            assert sorted(chosen) == sorted(lowest)


def test_a_finished_run_is_reused_only_while_its_config_and_filter_are_unchanged(experiment, tmp_path):
    cfg = tmp_path / "ablation.yaml"
    cfg.write_text("train:\n  learning_rate: 1.0e-5\n")

    def trains_after(*argv):
        before = len(experiment.calls)
        run, args = parse_args(
            "ablation", ["--config", str(cfg), "--output_dir", str(experiment.root), *argv]
        )
        ablation(run, args, str(cfg))
        return [m for m, _ in experiment.calls[before:] if m == "recipe.train"]

    argv = ("--seeds", "1", "--arms", "real_only", "real+accepted", "--bootstrap_samples", "20")
    assert len(trains_after(*argv)) == 2
    assert trains_after(*argv) == []  # same command, same inputs: reused
    # the same path with another content: every run depends on it, so every run is made again
    cfg.write_text("train:\n  learning_rate: 3.0e-5\n")
    assert len(trains_after(*argv)) == 2
