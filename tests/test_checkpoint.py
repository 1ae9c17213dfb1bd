"""Run directories: safetensors + JSON round trips, every way a file can be broken or hostile, text
encoder compatibility, optimiser state flattening and crash-safe training state."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cmrl.algo.agent import MetaAgent, TaskBelief
from cmrl.agent_kinds import KINDS
from cmrl.algo.trained_agent import TrainedAgent, load_agent
from cmrl.runs.checkpoint import (CONFIG_FILE, FORMAT, MODEL_FILE, STATE_DIR, CheckpointError,
                                  flatten_state, load_training_state, read_run_info, save_model,
                                  save_training_state, unflatten_state)
from cmrl.envs.tasks import ML4_TEST
from cmrl.nets.text_encoders import TextEncoderError
from conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config

TEXT = {"cmrl": {"name": "minilm", "dim": 384}, "pearl": {"name": "none", "dim": 0},
        "sm": {"name": "none", "dim": 0}, "care": {"name": "minilm", "dim": 384}}


def _info(agent: MetaAgent, text_encoder: dict) -> dict:
    """What trainer.Trainer.run_info() writes (the fields load_agent reads, and a few more)."""
    return {"config": agent.config.to_dict(), "agent": agent.kind, "obs_dim": OBS_DIM,
            "act_dim": ACT_DIM, "text_encoder": dict(text_encoder),
            "train_tasks": list(agent.train_tasks), "test_tasks": list(ML4_TEST),
            "goal_texts": {}, "env_steps": 123, "grad_steps": 45, "iteration": 1,
            "mode": "online", "prior_data": "none"}


def _saved(tmp_path: Path, kind: str = "cmrl", text_encoder: dict | None = None,
           seed: int = 0) -> tuple[Path, MetaAgent]:
    text_encoder = text_encoder or TEXT[kind]
    torch.manual_seed(seed)
    agent = MetaAgent(tiny_config(kind), OBS_DIM, ACT_DIM,
                      text_encoder["dim"] if KINDS[kind].uses_text else 0, ML4_TRAIN)
    with torch.no_grad():  # move away from any fresh initialisation, so loading must really load
        for p in agent.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for p in agent.critic_target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run = tmp_path / f"run-{kind}"
    save_model(run, agent, _info(agent, text_encoder))
    return run, agent


# -- round trip ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cmrl", "pearl", "sm", "care"])
def test_round_trip_identical_weights_and_actions(tmp_path, kind):
    run, agent = _saved(tmp_path, kind)
    assert sorted(os.listdir(run)) == [CONFIG_FILE, MODEL_FILE]  # no temporary files left over
    torch.manual_seed(999)  # the loaded agent's own initialisation differs from the saved weights
    trained = load_agent(run)
    assert isinstance(trained, TrainedAgent) and trained.kind == kind
    assert trained.info["env_steps"] == 123 and "env_steps=123" in repr(trained)
    saved, loaded = agent.state_dict(), trained.agent.state_dict()
    assert saved.keys() == loaded.keys()
    for k in saved:
        assert torch.equal(saved[k], loaded[k]), k
    assert trained.agent.train_tasks == tuple(ML4_TRAIN)
    assert trained.config.to_dict() == agent.config.to_dict()
    assert not trained.agent.training  # loaded in eval mode

    obs = np.random.default_rng(0).normal(size=(5, OBS_DIM)).astype(np.float32)
    if kind == "sm":
        cond = agent.task_condition(torch.tensor([0, 1, 2, -1, 0]))
    else:
        cond = torch.randn(5, agent.cond_dim, generator=torch.Generator().manual_seed(1))
    a1 = agent.act(obs, cond, deterministic=True)
    a2 = trained.agent.act(obs, cond, deterministic=True)
    assert torch.equal(a1.action, a2.action)
    if a1.routing is not None:
        for p, q in zip(a1.routing.layers, a2.routing.layers):
            assert torch.equal(p, q)


def test_round_trip_cmrl_goal_conditioned_belief(tmp_path, minilm):
    run, agent = _saved(tmp_path, "cmrl")
    trained = load_agent(run)
    assert trained.text_encoder is minilm
    g = trained.encode_goal("close the window")
    np.testing.assert_array_equal(g, minilm.encode("close the window"))
    obs = np.zeros((1, OBS_DIM), np.float32)
    b1, b2 = TaskBelief(agent, 1, goal=g), TaskBelief(trained.agent, 1, goal=g)
    for b in (b1, b2):
        b.observe(obs, np.zeros((1, ACT_DIM), np.float32), np.ones(1, np.float32), obs + 0.1)
        b.sample_z(deterministic=True)
    torch.testing.assert_close(b1.infer_posterior()[0], b2.infer_posterior()[0], rtol=0, atol=0)
    assert torch.equal(b1.act(obs, deterministic=True).action, b2.act(obs, deterministic=True).action)


def test_pearl_and_sm_have_no_text_encoder(tmp_path):
    for kind in ("pearl", "sm"):
        run, _ = _saved(tmp_path, kind)
        trained = load_agent(run)
        assert trained.text_encoder is None
        assert trained.encode_goal("open the drawer") is None


# -- damaged files ---------------------------------------------------------------------------------
def _raises(run: Path, *fragments: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_agent(run)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"
    return info.value


def test_truncated_model_file(tmp_path):
    run, _ = _saved(tmp_path, "cmrl")
    path = run / MODEL_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises(run, str(path))


def test_truncated_just_after_header(tmp_path):
    run, _ = _saved(tmp_path, "pearl")
    path = run / MODEL_FILE
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    path.write_bytes(data[: header + 10])
    _raises(run, str(path))


def test_random_bytes_model_file(tmp_path):
    run, _ = _saved(tmp_path, "cmrl")
    (run / MODEL_FILE).write_bytes(np.random.default_rng(0).bytes(4096))
    _raises(run, str(run / MODEL_FILE))


def test_empty_and_missing_model_file(tmp_path):
    run, _ = _saved(tmp_path, "sm")
    (run / MODEL_FILE).write_bytes(b"")
    _raises(run, str(run / MODEL_FILE))
    (run / MODEL_FILE).unlink()
    _raises(run, str(run / MODEL_FILE))


def test_wrong_shape_tensor_is_named(tmp_path):
    run, _ = _saved(tmp_path, "cmrl")
    path = run / MODEL_FILE
    tensors = load_file(str(path))
    name = "actor.body.net.head.weight"
    assert name in tensors
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1], 3)
    save_file(tensors, str(path), metadata={"format": FORMAT})
    _raises(run, str(path), name)


def test_wrong_dtype_missing_and_extra_tensors(tmp_path):
    run, _ = _saved(tmp_path, "pearl")
    path = run / MODEL_FILE
    original = load_file(str(path))

    t = dict(original)
    t["log_alpha"] = t["log_alpha"].double()
    save_file(t, str(path), metadata={"format": FORMAT})
    _raises(run, "log_alpha")

    t = dict(original)
    del t["log_alpha"]
    save_file(t, str(path), metadata={"format": FORMAT})
    _raises(run, "log_alpha")

    t = dict(original)
    t["extra.weight"] = torch.zeros(2)
    save_file(t, str(path), metadata={"format": FORMAT})
    _raises(run, "extra.weight")


def test_model_file_without_format_marker(tmp_path):
    run, _ = _saved(tmp_path, "pearl")
    path = run / MODEL_FILE
    save_file(load_file(str(path)), str(path))
    _raises(run, str(path))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(tmp_path, value):
    run, agent = _saved(tmp_path, "cmrl")
    path = run / MODEL_FILE
    tensors = load_file(str(path))
    name = "encoder.transition_net.0.weight"
    tensors[name][3, 4] = value
    save_file(tensors, str(path), metadata={"format": FORMAT})
    _raises(run, str(path), name)


def test_config_not_json(tmp_path):
    run, _ = _saved(tmp_path, "cmrl")
    (run / CONFIG_FILE).write_text("{ this is not json")
    _raises(run, CONFIG_FILE)
    (run / CONFIG_FILE).write_bytes(b"\xff\xfe\x00garbage")
    _raises(run, CONFIG_FILE)
    (run / CONFIG_FILE).write_text("[1, 2, 3]")
    _raises(run, CONFIG_FILE)


def _edit_config(run: Path, edit) -> None:
    info = json.loads((run / CONFIG_FILE).read_text())
    edit(info)
    (run / CONFIG_FILE).write_text(json.dumps(info))


def test_config_wrong_format_marker(tmp_path):
    run, _ = _saved(tmp_path, "cmrl")
    _edit_config(run, lambda i: i.update(format="cmrl-run-v0"))
    _raises(run, CONFIG_FILE, "format")
    _edit_config(run, lambda i: i.pop("format"))
    _raises(run, CONFIG_FILE)


def test_config_unknown_agent_kind(tmp_path):
    run, _ = _saved(tmp_path, "cmrl")
    _edit_config(run, lambda i: i["config"]["train"].update(agent="dqn"))
    _raises(run, CONFIG_FILE, "dqn")


def test_config_invalid_fields(tmp_path):
    run, _ = _saved(tmp_path, "pearl")
    _edit_config(run, lambda i: i.pop("obs_dim"))
    _raises(run, CONFIG_FILE, "obs_dim")

    run, _ = _saved(tmp_path, "sm")
    _edit_config(run, lambda i: i.update(train_tasks="drawer-open-v3"))
    _raises(run, CONFIG_FILE, "train_tasks")

    run, _ = _saved(tmp_path, "cmrl")
    _edit_config(run, lambda i: i["config"]["net"].update(num_layers="four"))
    _raises(run, CONFIG_FILE, "num_layers")

    run, _ = _saved(tmp_path, "cmrl")
    _edit_config(run, lambda i: i["config"].update(extra={}))
    _raises(run, CONFIG_FILE, "extra")


def test_config_architecture_does_not_match_weights(tmp_path):
    run, _ = _saved(tmp_path, "cmrl")
    _edit_config(run, lambda i: i["config"]["net"].update(num_modules=4))
    _raises(run, str(run / MODEL_FILE))

    run, _ = _saved(tmp_path, "pearl")
    _edit_config(run, lambda i: i.update(obs_dim=40))
    _raises(run, str(run / MODEL_FILE))


@pytest.mark.parametrize("dim", ["x", None])
def test_config_text_encoder_dim_not_an_integer(tmp_path, dim):
    run, _ = _saved(tmp_path, "cmrl")
    _edit_config(run, lambda i: i["text_encoder"].update(dim=dim))
    _raises(run, CONFIG_FILE)


def test_missing_run_dir_and_file_instead_of_dir(tmp_path):
    _raises(tmp_path / "does-not-exist", "does-not-exist")
    f = tmp_path / "a-file"
    f.write_text("hi")
    _raises(f, str(f))
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(empty, CONFIG_FILE)


class _Payload:
    """Unpickling this object opens (creates) the marker file: code execution on load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_pickle_as_model_file_is_not_executed(tmp_path):
    run, _ = _saved(tmp_path, "cmrl")
    marker = tmp_path / "pwned"
    torch.save({"actor.body.net.head.weight": _Payload(marker)}, run / MODEL_FILE)
    assert not marker.exists()
    _raises(run, str(run / MODEL_FILE))
    assert not marker.exists(), "loading the checkpoint executed pickled code"

    # the payload is live: an unsafe pickle load of the same kind of file does run it
    live, probe = tmp_path / "live.pt", tmp_path / "probe"
    torch.save({"w": _Payload(probe)}, live)
    torch.load(live, weights_only=False)
    assert probe.exists()


def test_hostile_pickle_as_config_file(tmp_path):
    run, _ = _saved(tmp_path, "sm")
    marker = tmp_path / "pwned-config"
    torch.save(_Payload(marker), run / CONFIG_FILE)
    _raises(run, CONFIG_FILE)
    assert not marker.exists()


# -- text encoder compatibility --------------------------------------------------------------------
def test_checkpoint_with_mismatched_text_encoder_dim(tmp_path):
    run, _ = _saved(tmp_path, "cmrl", text_encoder={"name": "minilm", "dim": 512})
    trained = load_agent(run)  # the weights themselves are consistent (512-d goal input)
    assert trained.agent.text_dim == 512
    with pytest.raises((TextEncoderError, CheckpointError), match="512"):
        trained.text_encoder
    with pytest.raises((TextEncoderError, CheckpointError)):
        trained.encode_goal("close the window")


def test_checkpoint_with_unknown_text_encoder(tmp_path):
    run, _ = _saved(tmp_path, "cmrl", text_encoder={"name": "word2vec", "dim": 384})
    trained = load_agent(run)
    with pytest.raises((TextEncoderError, CheckpointError), match="word2vec"):
        trained.encode_goal("close the window")


# -- optimiser state and training state ------------------------------------------------------------
def _adam(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    return model, opt


def _train_step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 5, generator=g)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


def _assert_same_structure(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_same_structure(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_structure(x, y, f"{where}.{i}")
    else:
        assert a == b, where


def test_flatten_unflatten_adam_state_round_trip(tmp_path):
    model, opt = _adam(0)
    for s in range(3):
        _train_step(model, opt, s)
    sd = opt.state_dict()
    tensors: dict = {}
    flat = flatten_state(sd, "opt", tensors)
    assert tensors and all(isinstance(t, torch.Tensor) for t in tensors.values())
    flat = json.loads(json.dumps(flat))  # the structure is pure JSON
    # through real files too
    save_training_state(tmp_path, tensors, {"opt": flat})
    loaded_tensors, state = load_training_state(tmp_path)
    restored = unflatten_state(state["opt"], loaded_tensors, "state")
    _assert_same_structure(sd, restored)
    assert set(restored["state"]) == set(sd["state"])  # integer parameter ids survive JSON

    # an optimiser restored from it continues exactly like the original
    model2, opt2 = _adam(1)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(restored)
    _train_step(model, opt, 10)
    _train_step(model2, opt2, 10)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_flatten_state_numpy_and_errors():
    tensors: dict = {}
    obj = {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": [1, 2.5, "x", None, True],
           "c": (torch.ones(2),)}
    flat = flatten_state(obj, "p", tensors)
    back = unflatten_state(json.loads(json.dumps(flat)), tensors, "here")
    assert isinstance(back["a"], np.ndarray)
    np.testing.assert_array_equal(back["a"], obj["a"])
    assert back["b"] == [1, 2.5, "x", None, True]
    assert torch.equal(back["c"][0], torch.ones(2))
    with pytest.raises(TypeError):
        flatten_state({"x": object()}, "p", {})
    with pytest.raises(CheckpointError, match="missing"):
        unflatten_state({"__tensor__": "nope"}, {}, "here")
    with pytest.raises(CheckpointError):
        unflatten_state({"surprise": 1}, {}, "here")


def _state_payload(step: int):
    tensors = {"w": torch.full((3,), float(step)), "buf": np.arange(4, dtype=np.float32) + step}
    return tensors, {"env_steps": step, "numpy_rng": {"state": [1, 2, step]}}


def test_save_training_state_replaces_and_cleans_up(tmp_path):
    save_training_state(tmp_path, *_state_payload(1))
    save_training_state(tmp_path, *_state_payload(2))
    tensors, state = load_training_state(tmp_path)
    assert state["env_steps"] == 2 and state["format"] == FORMAT
    assert torch.equal(tensors["w"], torch.full((3,), 2.0))
    np.testing.assert_array_equal(tensors["buf"].numpy(), np.arange(4, dtype=np.float32) + 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_DIR]


def test_training_state_survives_kill_between_renames(tmp_path):
    save_training_state(tmp_path, *_state_payload(1))
    # a second save was killed after `state` -> `.state.old` and before `.state.tmp` -> `state`
    os.replace(tmp_path / STATE_DIR, tmp_path / f".{STATE_DIR}.old")
    (tmp_path / f".{STATE_DIR}.tmp").mkdir()
    (tmp_path / f".{STATE_DIR}.tmp" / "state.json").write_text('{"format": "')  # half written
    assert not (tmp_path / STATE_DIR).exists()
    tensors, state = load_training_state(tmp_path)
    assert state["env_steps"] == 1 and state["numpy_rng"] == {"state": [1, 2, 1]}
    assert torch.equal(tensors["w"], torch.full((3,), 1.0))
    # and the next save recovers a clean layout
    save_training_state(tmp_path, *_state_payload(3))
    assert load_training_state(tmp_path)[1]["env_steps"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_DIR]


class _Killed(BaseException):
    """Stands in for the process being killed mid-save."""


def test_training_state_survives_second_kill_after_recovery(tmp_path, monkeypatch):
    save_training_state(tmp_path, *_state_payload(1))
    os.replace(tmp_path / STATE_DIR, tmp_path / f".{STATE_DIR}.old")  # first kill between renames
    assert load_training_state(tmp_path)[1]["env_steps"] == 1  # resumed from .state.old

    real_replace = os.replace

    def killed(src, dst):
        if Path(src).name == f".{STATE_DIR}.tmp":
            raise _Killed("killed before the new state was renamed into place")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(_Killed):
        save_training_state(tmp_path, *_state_payload(2))
    monkeypatch.setattr(os, "replace", real_replace)
    tensors, state = load_training_state(tmp_path)  # the previous complete state must still be there
    assert state["env_steps"] == 1


def test_training_state_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no training state"):
        load_training_state(tmp_path)
    save_training_state(tmp_path, *_state_payload(1))
    (tmp_path / STATE_DIR / "state.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="state.json"):
        load_training_state(tmp_path)
    save_training_state(tmp_path, *_state_payload(1))
    p = tmp_path / STATE_DIR / "state.safetensors"
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="state.safetensors"):
        load_training_state(tmp_path)


def test_read_run_info_returns_info(tmp_path):
    run, agent = _saved(tmp_path, "pearl")
    info = read_run_info(run)
    assert info["format"] == FORMAT and info["agent"] == "pearl"
    assert info["train_tasks"] == list(ML4_TRAIN) and info["test_tasks"] == ["window-close-v3"]
    shutil.rmtree(run)
    with pytest.raises(CheckpointError):
        read_run_info(run)


def test_shipping_a_run_leaves_no_absolute_paths_of_the_training_machine(tmp_path):
    import json
    import shutil

    from cmrl.runs.checkpoint import SHIPPED_FILES, portable_paths, read_run_info, ship

    assert portable_paths({"a": [str(tmp_path / "data" / "x"), "/etc/x", 3]}, tmp_path) == \
        {"a": ["data/x", "/etc/x", 3]}
    run = tmp_path / "runs" / "r"
    shutil.copytree("checkpoints/ml4/pearl", run)
    info = json.loads((run / "config.json").read_text())
    info["config"]["train"]["offline"] = str(tmp_path / "data" / "ml4")
    (run / "config.json").write_text(json.dumps(info))
    (run / "state").mkdir()  # resumable state is never shipped
    copied = ship(run, tmp_path / "ship", root=tmp_path)
    assert "config.json" in copied and "model.safetensors" in copied
    assert set(copied) <= set(SHIPPED_FILES)
    assert not (tmp_path / "ship" / "state").exists()
    assert str(tmp_path) not in (tmp_path / "ship" / "config.json").read_text()
    assert read_run_info(tmp_path / "ship")["config"]["train"]["offline"] == "data/ml4"


def test_shipping_keeps_the_goal_probe_the_app_draws_with(tmp_path):
    """A run diagnosed with --save-probe ships its probe (and the diagnosis it was fitted in), so
    the shipped checkpoint draws the agent's believed goal as the run did."""
    from cmrl.runs.checkpoint import ship

    run = tmp_path / "runs" / "r"
    shutil.copytree("checkpoints/ml1/reach-v3/cmrl", run)
    copied = ship(run, tmp_path / "ship", root=tmp_path)
    assert {"goal_probe.json", "diagnosis_train.json"} <= set(copied)
    probe = load_agent(tmp_path / "ship").goal_probe()
    assert probe is not None and probe(np.zeros(3)).shape == (3,)


def test_shipped_checkpoints_hold_no_absolute_paths():
    from pathlib import Path

    for p in Path("checkpoints").rglob("*.json"):
        text = p.read_text()
        assert '"/work/' not in text and '"/home/' not in text and '"/tmp/' not in text, p


def test_info_finished_checks_the_run_budget_or_a_given_one(capsys):
    """`cmrl info --finished RUN [--steps N]`: exit 0 once the saved model reached the run's own
    budget, or N (what a script carrying a run on to a larger budget asks)."""

    from cmrl.cli import main

    run = str(Path(__file__).parent.parent / "checkpoints" / "ml4" / "cmrl")  # 10,000 offline steps
    assert main(["info", "--finished", run]) == 0
    assert main(["info", "--finished", "--steps", "10000", run]) == 0
    assert main(["info", "--finished", "--steps", "20000", run]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "10000 of 20000 steps"
