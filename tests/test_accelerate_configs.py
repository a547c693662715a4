"""The accelerate config files load as accelerate reads them, with the intended launch mode."""

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
EXPECTED = {
    "single_gpu.yaml": ("NO", 1, 1),
    "multi_gpu.yaml": ("MULTI_GPU", 8, 1),
    "multi_node.yaml": ("MULTI_GPU", 16, 2),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 8, 1),
    "fsdp.yaml": ("FSDP", 8, 1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_loads(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / name))
    kind, processes, machines = EXPECTED[name]
    assert (cfg.distributed_type.value, cfg.num_processes, cfg.num_machines) == (kind, processes, machines)
    # precision belongs to the train section (bf16/fp16), not to the launcher
    assert str(cfg.mixed_precision) == "no"
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == 2
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_every_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
