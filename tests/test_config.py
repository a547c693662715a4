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
