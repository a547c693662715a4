from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, RunArgs, load_yaml, parse_args, save_resolved
from data_prep.prepare_args import PrepareArgs


def write(tmp_path, doc):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_yaml_then_cli_override(tmp_path):
    cfg = write(
        tmp_path,
        {"run": {"output_dir": "x", "seed": 3}, "prepare": {"source": "fsdd", "test_fraction": 0.25}},
    )
    run, args = parse_args("prepare", ["--config", str(cfg), "--test_fraction", "0.4", "--seed", "7"])
    assert isinstance(run, RunArgs) and isinstance(args, PrepareArgs)
    assert (run.output_dir, run.seed) == ("x", 7)  # CLI beats YAML
    assert args.source == "fsdd" and args.test_fraction == 0.4
    assert args.max_duration == 30.0  # untouched default


def test_list_and_bool_fields(tmp_path):
    cfg = write(tmp_path, {"prepare": {"target_speakers": ["a", "b"], "keep_source": False}})
    _, args = parse_args("prepare", ["--config", str(cfg)])
    assert args.target_speakers == ["a", "b"] and args.keep_source is False
    _, args = parse_args("prepare", ["--config", str(cfg), "--target_speakers", "c"])
    assert args.target_speakers == ["c"]


def test_defaults_without_config():
    run, args = parse_args("prepare", [])
    assert run.seed == 0 and args.source == "asterisk"


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"prepare": {"test_fractoin": 0.5}}, "test_fractoin"),
        ({"prepar": {}}, "prepar"),
        ({"run": {"sede": 1}}, "sede"),
        ({"evaluate": {"batchsize": 4}}, "batchsize"),  # other sections are checked too
    ],
)
def test_unknown_key_is_an_error_naming_it(tmp_path, doc, needle):
    cfg = write(tmp_path, doc)
    with pytest.raises(ConfigError, match=needle):
        parse_args("prepare", ["--config", str(cfg)])


def test_unknown_cli_argument(tmp_path):
    with pytest.raises(ConfigError, match="--nope"):
        parse_args("prepare", ["--nope", "1"])


def test_invalid_choice_rejected():
    with pytest.raises(SystemExit):
        parse_args("prepare", ["--split_by", "random"])


def test_resolved_config_round_trips(tmp_path):
    run, args = parse_args("prepare", ["--source", "csv", "--path", "m.csv"])
    save_resolved(tmp_path / "config.yaml", "prepare", run, args)
    doc = load_yaml(tmp_path / "config.yaml")
    assert doc["prepare"]["path"] == "m.csv" and doc["run"]["seed"] == 0
    _, again = parse_args("prepare", ["--config", str(tmp_path / "config.yaml")])
    assert again == args


def test_every_field_has_help_and_default():
    import dataclasses

    from core import config

    ours = [
        t
        for sec in config.sections().values()
        for t in sec.types
        if not t.__module__.startswith("transformers")
    ]
    assert len(ours) >= 6
    for cls in [*ours, RunArgs]:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, (
                f.name
            )


def test_every_stage_section_is_registered():
    from core import config

    assert set(config.sections()) == {"prepare", "generate", "filter", "train", "evaluate", "ablation"}


# ---------------------------------------------------------------------------------------------
# Values: type, choices, range and a field's validator, for YAML and command line alike
# ---------------------------------------------------------------------------------------------
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"prepare": {"on_error": "rasie"}}, 'prepare.on_error: "rasie" is not one of: skip, raise'),
        ({"prepare": {"split_by": "speakers"}}, 'prepare.split_by: "speakers" is not one of: text, speaker, utterance'),
        ({"prepare": {"test_fraction": -0.5}}, "prepare.test_fraction: -0.5 is out of range: 0 < test_fraction < 1"),
        ({"prepare": {"test_fraction": 1.5}}, "prepare.test_fraction: 1.5 is out of range: 0 < test_fraction < 1"),
        ({"prepare": {"max_train_utterances": 10.5}}, "prepare.max_train_utterances: 10.5 is not an integer"),
        ({"prepare": {"keep_source": "false"}}, 'prepare.keep_source: "false" is not true or false (write true or false without quotes)'),
        ({"prepare": {"target_speakers": "alice"}}, 'prepare.target_speakers: "alice" is not a list of strings (write a YAML list'),
        ({"run": {"seed": -1}}, "run.seed: -1 is out of range: seed >= 0"),
        ({"generate": {"perturb_synthetic_prob": 1.5}}, "generate.perturb_synthetic_prob: 1.5 is out of range: 0 <= perturb_synthetic_prob <= 1"),
        ({"filter": {"policy": "maximum"}}, "filter.policy: \"maximum\" is not valid: bad sampling policy 'maximum'"),
        ({"filter": {"policy": "budget:2.5"}}, "filter.policy: \"budget:2.5\" is not valid: bad sampling policy"),
        ({"filter": {"policy": "per_group:0"}}, "filter.policy: \"per_group:0\" is not valid: bad sampling policy 'per_group:0': use `max`, `quantile:q` with 0 < q <= 1, `budget:N` with an integer N >= 1, or `per_group:k` with an integer k >= 1 (with group_by: text)"),
        ({"filter": {"group_by": "speaker"}}, 'filter.group_by: "speaker" is not one of: none, text'),
        # each value valid, together not: per_group:k needs groups
        ({"filter": {"policy": "per_group:3"}}, "filter: policy per_group:3 accepts about k candidates per group, but group_by is none"),
        ({"filter": {"folds": 1}}, "filter.folds: 1 is out of range: folds >= 2"),
        ({"filter": {"temperature": 0}}, "filter.temperature: 0 is out of range: temperature > 0"),
        ({"train": {"max_steps": 1.5}}, "train.max_steps: 1.5 is not an integer"),
        ({"train": {"max_steps": "abc"}}, 'train.max_steps: "abc" is not an integer'),
        ({"train": {"use_candidates": "bogus"}}, 'train.use_candidates: "bogus" is not one of: none, accepted, all, random, weighted'),
        ({"train": {"packing": False}}, "train.packing: false is not one of: auto, on, off (YAML reads unquoted"),
        ({"train": {"per_device_train_batch_size": 0}}, "train.per_device_train_batch_size: 0 is out of range: per_device_train_batch_size >= 1"),
        ({"train": {"eval_strategy": "sometimes"}}, 'train.eval_strategy: "sometimes" is not one of: no, steps, epoch'),
        ({"evaluate": {"batch_size": 0}}, "evaluate.batch_size: 0 is out of range: batch_size >= 1"),
        ({"ablation": {"arms": ["real+bogus"]}}, "ablation.arms: [\"real+bogus\"] has item(s) real+bogus not one of: zero_shot"),
        ({"ablation": {"mix_real": 1.0}}, "ablation.mix_real: 1.0 is out of range: 0 < mix_real < 1"),
    ],
)  # fmt: skip
def test_a_wrong_value_anywhere_in_the_file_stops_the_first_stage(tmp_path, doc, message):
    """Each of these ran silently before (set_defaults skips argparse's checks): `rasie` ran as
    `skip`, test_fraction -0.5 sliced from the end, 1.5 wrote no target_train."""
    cfg = write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        parse_args("prepare", ["--config", str(cfg)])
    assert str(err.value).startswith(f"{cfg}: {message}")


def test_every_problem_is_reported_at_once(tmp_path):
    cfg = write(
        tmp_path,
        {
            "prepare": {"on_error": "rasie", "test_fraction": 1.5, "split_by": "txt", "typo": 1},
            "train": {"max_steps": 1.5, "use_candidates": "bogus"},
            "filter": {"policy": "quantile:0"},
        },
    )
    with pytest.raises(ConfigError) as err:
        load_yaml(cfg)
    lines = str(err.value).splitlines()
    keys = ["on_error", "test_fraction", "split_by", "typo", "max_steps", "use_candidates", "policy"]
    assert len(lines) == len(keys) and all(line.startswith(f"{cfg}: ") for line in lines)
    for key in keys:
        assert sum(key in line for line in lines) == 1, key


def test_yaml_numbers_that_pyyaml_leaves_as_strings_are_converted(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train:\n  learning_rate: 1e-5\nprepare:\n  max_duration: '20'\n")
    doc = load_yaml(cfg)  # PyYAML (YAML 1.1) reads 1e-5 as the string "1e-5"
    assert doc["train"]["learning_rate"] == 1e-5 and doc["prepare"]["max_duration"] == 20.0
    assert isinstance(doc["prepare"]["max_duration"], float)


def test_command_line_values_pass_the_same_rules(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^command line: --test_fraction 1.5 is out of range: 0 < test_fraction < 1$"
    ):
        parse_args("prepare", ["--test_fraction", "1.5"])
    with pytest.raises(
        ConfigError, match=r"command line: --policy budget:0 is not valid: bad sampling policy"
    ):
        parse_args("filter", ["--policy", "budget:0"])
    with pytest.raises(ConfigError) as err:
        parse_args("prepare", ["--seed", "-1", "--max_duration", "0", "--min_duration", "0.1"])
    assert str(err.value).splitlines() == [
        "command line: --seed -1 is out of range: seed >= 0",
        "command line: --max_duration 0.0 is out of range: max_duration > 0",
    ]
    # values that do not go together, wherever each came from
    with pytest.raises(
        ConfigError,
        match=r"^filter: policy per_group:3 accepts about k candidates per group, but group_by is none",
    ):
        parse_args("filter", ["--policy", "per_group:3"])
    grouped = write(tmp_path, {"filter": {"policy": "per_group:3", "group_by": "text"}})
    assert parse_args("filter", ["--config", str(grouped)])[1].group_by == "text"
    with pytest.raises(ConfigError, match="group_by is none"):
        parse_args("filter", ["--config", str(grouped), "--group_by", "none"])
    # a good command-line value repairs nothing in a bad file: the file is checked as a whole
    cfg = write(tmp_path, {"prepare": {"test_fraction": 1.5}})
    with pytest.raises(ConfigError, match="prepare.test_fraction"):
        parse_args("prepare", ["--config", str(cfg), "--test_fraction", "0.3"])
    # argparse itself refuses a wrong type or choice on the command line, naming the argument
    for argv in (["--max_train_utterances", "1.5"], ["--on_error", "rasie"], ["--keep_source", "maybe"]):
        with pytest.raises(SystemExit):
            parse_args("prepare", argv)


@pytest.mark.parametrize(
    "argv, expected",
    [([], True), (["--keep_source"], True), (["--keep_source", "false"], False), (["--keep_source", "no"], False),
     (["--no_keep_source"], False), (["--keep_source", "true"], True)],
)  # fmt: skip
def test_booleans_on_the_command_line(argv, expected):
    assert parse_args("prepare", argv)[1].keep_source is expected


def test_output_dir_that_is_a_file_is_refused_before_the_stage(tmp_path):
    taken = tmp_path / "exp"
    taken.write_text("not a folder")
    with pytest.raises(
        ConfigError, match=f"run.output_dir {taken} is an existing file.*choose another output_dir"
    ):
        parse_args("prepare", ["--output_dir", str(taken)])
    with pytest.raises(ConfigError, match=f"cannot be created: {taken} is a file"):
        parse_args("prepare", ["--output_dir", str(taken / "sub")])
    cfg = write(tmp_path, {"run": {"output_dir": str(taken)}})
    with pytest.raises(ConfigError, match="is an existing file"):
        parse_args("generate", ["--config", str(cfg)])
    run, _ = parse_args("prepare", ["--config", str(cfg), "--output_dir", str(tmp_path / "new")])
    assert run.output_dir == str(tmp_path / "new")


def test_a_stage_main_reports_a_bad_config_without_a_traceback_and_decodes_nothing(tmp_path, capsys):
    from data_prep.prepare import main

    out = tmp_path / "exp"
    cfg = write(
        tmp_path,
        {"run": {"output_dir": str(out)}, "prepare": {"source": "audiofolder", "path": str(tmp_path), "split_by": "speakr", "max_train_utterances": 2.5}},
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(cfg)])
    message = str(exit_.value.code)
    assert message.splitlines() == [
        f"error: {cfg}: prepare.max_train_utterances: 2.5 is not an integer",
        f'{cfg}: prepare.split_by: "speakr" is not one of: text, speaker, utterance',
    ]
    assert not out.exists()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    """Every section of every config in configs/, the GPU ones included, passes the checks."""
    doc = load_yaml(path)
    assert set(doc) >= {"run", "prepare"}
    for name in doc:
        # transformers itself refuses bf16 on a machine without a GPU when it builds the training
        # arguments; the file's values were checked by load_yaml above.
        if name != "run" and not (name == "train" and doc["train"].get("bf16")):
            parse_args(name, ["--config", str(path)])


def test_defaults_and_rules_agree():
    """Every default (the dataclasses' and the sections' recipe defaults) passes its own rules, and
    every section rule names a field."""
    import dataclasses

    from core import config
    from core.validation import problems, specs

    for sec in config.sections().values():
        fields = sec.specs()
        assert set(sec.rules) <= set(fields), sec.name
        ours = [t for t in sec.types if not t.__module__.startswith("transformers")]
        defaults = {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for t in ours
            for f in dataclasses.fields(t)
        }
        assert problems({**defaults, **sec.defaults}, fields, lambda k, v: k)[1] == [], sec.name
    assert problems(dataclasses.asdict(RunArgs()), specs(RunArgs), lambda k, v: k)[1] == []


def test_help_shows_choices_and_ranges(capsys):
    with pytest.raises(SystemExit):
        parse_args("prepare", ["--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "{skip,raise}" in shown and "{text,speaker,utterance}" in shown
    assert "[0 < test_fraction < 1]" in shown and "[seed >= 0]" in shown
    with pytest.raises(SystemExit):
        parse_args("train", ["--help"])
    assert "[per_device_train_batch_size >= 1]" in " ".join(capsys.readouterr().out.split())
