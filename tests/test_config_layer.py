"""Rules that live in one place: mode-dependent defaults in the config layer, the metric key format
in the logger, and expected errors as one clean line from the CLI."""

from __future__ import annotations

import pytest
import torch

from cmrl.cli import main as cli_main
from cmrl.config import OFFLINE_BC_WEIGHT, ConfigError, RunConfig
from cmrl.runs.logger import eval_key, eval_values, parse_eval_key
from tests.conftest import tiny_config


def test_bc_weight_default_follows_the_training_mode_for_every_entry_point(tmp_path):
    online = RunConfig()
    assert online.sac.bc_weight is None and online.resolved().sac.bc_weight == 0.0
    offline = RunConfig().updated({"train.mode": "offline", "train.offline": str(tmp_path)})
    assert offline.resolved().sac.bc_weight == OFFLINE_BC_WEIGHT
    explicit = offline.updated({"sac.bc_weight": 0.5})
    assert explicit.resolved().sac.bc_weight == 0.5 and explicit.resolved() is explicit
    # a learner built straight from a config (no CLI, no trainer) uses the same rule
    from cmrl.algo.agent import MetaAgent
    from cmrl.algo.sac import SACLearner

    cfg = tiny_config("pearl").updated({"train.mode": "offline", "train.offline": str(tmp_path)})
    agent = MetaAgent(cfg, 39, 4, 0, ["drawer-open-v3", "drawer-close-v3", "window-open-v3"])
    assert SACLearner(agent).bc_weight == OFFLINE_BC_WEIGHT
    with pytest.raises(ConfigError, match="bc_weight"):
        RunConfig().updated({"sac.bc_weight": -1.0})


def test_old_configs_with_explicit_bc_weight_read_back_unchanged():
    data = RunConfig().to_dict()
    data["sac"]["bc_weight"] = 0.0
    assert RunConfig.from_dict(data).sac.bc_weight == 0.0


def test_metric_keys_are_written_and_parsed_by_one_owner():
    key = eval_key("test", "success", "window-close-v3")
    assert key == "eval_test_success/window-close-v3"
    assert parse_eval_key(key) == ("test", "success", "window-close-v3")
    for other in ("eval_train_success", "kl", "eval_every", "eval_test_bogus/x", "eval_x_success/t"):
        assert parse_eval_key(other) is None
    rec = {eval_key("train", "success", "a"): 1.0, eval_key("train", "return", "a"): 5.0,
           eval_key("test", "success", "b"): 0.0, "kl": 3.0}
    assert eval_values(rec, "train", "success") == {"a": 1.0}
    assert set(eval_values(rec)) == {("train", "success", "a"), ("train", "return", "a"),
                                     ("test", "success", "b")}
    with pytest.raises(ValueError):
        eval_key("val", "success", "a")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_a_gpu_is_one_clean_line(tmp_path, capsys):
    rc = cli_main(["train", "--agent", "pearl", "--device", "cuda", "--steps", "1",
                   "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc != 0 and "no CUDA device" in err and "Traceback" not in err


def test_tensorboard_writer_beside_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cmrl.algo.trainer import train
    from tests.test_end_to_end import tiny

    cfg = tiny("pearl", steps=60).updated({"train.tensorboard": True, "train.eval_every": 60,
                                           "train.checkpoint_every": 60})
    train(cfg, tmp_path / "run", progress=False)
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert "critic_loss" in tags and "eval_test_success/window-close-v3" in tags
    assert "step" not in tags and "env_steps" not in tags
    import json

    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert acc.Scalars("critic_loss")[-1].step == last["step"] >= 60


def test_one_place_maps_user_errors_to_one_line():
    from cmrl.runs.checkpoint import CheckpointError
    from cmrl.data import DatasetError
    from cmrl.errors import MAX_MESSAGE, user_errors, user_message

    for cls in (ConfigError, CheckpointError, DatasetError, FileNotFoundError):
        assert issubclass(cls, user_errors())
    assert not issubclass(RuntimeError, user_errors()) and not issubclass(TypeError, user_errors())
    assert user_message(ConfigError("bad\n  value\n")) == "bad; value"
    assert len(user_message(ConfigError("x" * 10_000))) == MAX_MESSAGE
    assert user_message(KeyError("no such task")) == "no such task"


def test_the_cli_has_a_flag_for_every_config_field_with_its_docstring():
    from cmrl.cli import _FLAG_TO_FIELD, build_parser, config_from_args
    from cmrl.config import CHOICES, config_fields

    hand = {"benchmark.name", "benchmark.train_tasks", "benchmark.test_tasks", "train.offline",
            "train.mode"}
    covered = set(_FLAG_TO_FIELD.values()) | hand
    assert {f.name for f in config_fields()} <= covered
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "Soft-Module's deep width" in help_text or "module_width" in help_text
    assert "[sac.kl_prior, default 'standard']" in help_text
    args = parser.parse_args(["train", "--run-dir", "x", "--kl-prior", "text", "--mlp-hidden",
                              "64,64", "--no-obs-norm", "--benchmark-seed", "3", "--seed", "5",
                              "--context-dropout", "0.25"])
    cfg = config_from_args(args)
    assert cfg.sac.kl_prior == "text" and cfg.net.mlp_hidden == [64, 64]
    assert cfg.net.obs_norm is False and cfg.benchmark.seed == 3 and cfg.train.seed == 5
    assert cfg.sac.context_dropout == 0.25
    # unset flags leave the dataclass defaults alone
    assert config_from_args(parser.parse_args(["train", "--run-dir", "x"])).to_dict() == \
        RunConfig().to_dict()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--run-dir", "x", "--kl-prior", "nope"])
    for name, choices in CHOICES.items():
        data = RunConfig().to_dict()
        section, field = name.split(".")
        data[section][field] = "not-a-choice"
        with pytest.raises(ConfigError, match=f"{name} must be one of {', '.join(choices)}"):
            RunConfig.from_dict(data)
