"""A run directory is user input: hostile config.json and model.safetensors files are refused with a
CheckpointError before anything big is allocated (bounds, nesting, numbers, memory budget, the
safetensors header); goal texts need visible characters; the text embedding cache is bounded; the
metrics history survives a failed rewrite on resume."""

from __future__ import annotations

import dataclasses
import json
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cmrl.runs import checkpoint as ckpt
from cmrl.algo.agent import MetaAgent
from cmrl.algo.trained_agent import load_agent
from cmrl.runs.checkpoint import CONFIG_FILE, MODEL_FILE, CheckpointError, save_model
from cmrl.config import ConfigError, NetworkConfig, RunConfig, SACConfig, check_bounds
from cmrl.runs.logger import JsonlWriter, read_metrics
from cmrl.envs.tasks import ML4_TEST
from cmrl.nets.text_encoders import GoalTextError, TextEncoder, validate_goal_text
from conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config


def _run(tmp_path: Path, name: str = "run") -> Path:
    """A small, untrained but complete cmrl run directory."""
    agent = MetaAgent(tiny_config("cmrl"), OBS_DIM, ACT_DIM, 384, ML4_TRAIN)
    run = tmp_path / name
    save_model(run, agent, {"config": agent.config.to_dict(), "agent": "cmrl", "obs_dim": OBS_DIM,
                            "act_dim": ACT_DIM, "text_encoder": {"name": "minilm", "dim": 384},
                            "train_tasks": list(ML4_TRAIN), "test_tasks": list(ML4_TEST)})
    return run


def _edit(run: Path, edit) -> None:
    info = json.loads((run / CONFIG_FILE).read_text())
    edit(info)
    (run / CONFIG_FILE).write_text(json.dumps(info))


def _net(**values):
    return lambda info: info["config"]["net"].update(values)


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _refused(run: Path, *fragments: str, max_bytes=ckpt.MAX_MODEL_BYTES) -> str:
    """Loading is refused with a CheckpointError naming each fragment, in well under a second,
    and the process's peak memory grows by less than 50 MB while it is tried."""
    _reset_peak()
    before, t0 = _peak_mb(), time.time()
    with pytest.raises(CheckpointError) as info:
        load_agent(run, max_bytes=max_bytes)
    assert time.time() - t0 < 2.0
    assert _peak_mb() - before < 50, f"peak grew {_peak_mb() - before:.0f} MB"
    for f in fragments:
        assert f in str(info.value), (f, str(info.value))
    return str(info.value)


@pytest.mark.parametrize("edit, fragment", [
    (_net(num_layers=10**9), "net.num_layers"),
    (_net(num_modules=10**6), "net.num_modules"),
    (_net(module_width=12000), "net.module_width"),
    (_net(embed_dim=10**7), "net.embed_dim"),
    (_net(gating_layers=10**5), "net.gating_layers"),
    (_net(latent_dim=10**6), "net.latent_dim"),
    (_net(encoder_hidden=[64] * 1000), "net.encoder_hidden"),
    (_net(mlp_hidden=[10**6]), "net.mlp_hidden"),
    (_net(task_id_names=["x"] * 10_000), "net.task_id_names"),
    (lambda i: i["config"]["sac"].update(lr=10**400), "integer"),
    (lambda i: i.update(obs_dim=10**9), "obs_dim"),
    (lambda i: i.update(act_dim=0), "act_dim"),
    (lambda i: i["text_encoder"].update(dim=10**7), "text_encoder.dim"),
    (lambda i: i.update(train_tasks=[f"t{k}" for k in range(1000)]), "train_tasks"),
])
def test_config_values_out_of_bounds_are_refused_before_building(tmp_path, edit, fragment):
    run = _run(tmp_path)
    _edit(run, edit)
    _refused(run, CONFIG_FILE, fragment)


def test_non_finite_numbers_in_config_are_refused(tmp_path):
    run = _run(tmp_path)
    text = (run / CONFIG_FILE).read_text().replace('"lr": 0.0003', '"lr": Infinity')
    assert "Infinity" in text
    (run / CONFIG_FILE).write_text(text)
    _refused(run, "non-finite")


def test_deeply_nested_and_oversized_config_json(tmp_path):
    run = _run(tmp_path)
    (run / CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json
    _refused(run, CONFIG_FILE, "nested")
    run = _run(tmp_path, "run2")
    _edit(run, lambda i: i.update(extra=json.loads("[" * 40 + "]" * 40)))  # parses, too deep
    _refused(run, "nested more than")
    run = _run(tmp_path, "run3")
    _edit(run, lambda i: i.update(padding="x" * (ckpt.MAX_CONFIG_BYTES + 1)))
    _refused(run, "bytes")


def test_networks_over_the_memory_budget_are_refused(tmp_path):
    """Every value within its bound, but together ~4 GB of networks: refused by the budget,
    with the process's peak memory unchanged. Without a budget, the (small) weights file's
    header does not match those networks: refused too, still before they are built."""
    run = _run(tmp_path)
    _edit(run, _net(module_width=4096, embed_dim=4096, num_modules=8))
    msg = _refused(run, CONFIG_FILE, "budget", "parameters")
    assert "MiB" in msg
    _refused(run, MODEL_FILE, "has shape", "expected", max_bytes=None)
    small = _run(tmp_path, "small")
    assert load_agent(small, max_bytes=None).kind == "cmrl"
    _refused(small, "budget", max_bytes=1024)


def _header_file(path: Path, table: dict, data: bytes = b"") -> None:
    raw = json.dumps(table).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_safetensors_header_is_checked_before_any_tensor_is_read(tmp_path):
    run = _run(tmp_path)
    path = run / MODEL_FILE
    expected = ckpt.read_tensor_header(path)
    name = "actor.body.net.head.weight"
    dtype, shape = expected[name]
    # A header claiming one tensor of 10^12 floats in a file of a few bytes.
    _header_file(path, {name: {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}})
    _refused(run, str(path), name)
    # A header length of 2^60 bytes.
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    _refused(run, str(path), "header")
    # Not JSON, deeply nested JSON, and a table whose offsets disagree with the shape.
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[")
    _refused(run, str(path))
    _header_file(path, json.loads("[" * 50 + "]" * 50))
    _refused(run, str(path))
    _header_file(path, {name: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, 8]}},
                 b"\0" * 8)
    _refused(run, str(path), name)


def test_safetensors_header_keys_are_bounded_before_it_is_parsed(tmp_path, monkeypatch):
    """A header of 200,000 keys (4 MB, within the 16 MB cap), and a short one packed with keys,
    are refused at once, before any JSON is parsed; the real header still loads."""
    run = _run(tmp_path)
    path = run / MODEL_FILE
    real = path.read_bytes()
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(ckpt.json, "loads", lambda raw, *a, **k: parsed.append(len(raw))
                        or real_loads(raw, *a, **k))
    many = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]} for i in range(200_000)}
    _header_file(path, many, b"\0" * 4)
    _refused(run, str(path), "header of")
    packed = ",".join(f'"{i}":1' for i in range(5_000))  # ~40 KB: within the byte bound
    raw = ("{" + packed + "}").encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    _refused(run, str(path), "keys")
    header_sizes = [n for n in parsed if n > 10_000]
    assert not header_sizes, header_sizes  # config.json (a few KB) was parsed, no header
    path.write_bytes(real)
    assert load_agent(run).kind == "cmrl"


def test_bounds_cover_fields_added_later():
    """A new int in `net` (a width or a count) gets the net default bound; a new float must be
    finite; known fields keep their own ranges."""
    Net = dataclasses.make_dataclass("Net", [("new_width", int, dataclasses.field(default=8))],
                                     bases=(NetworkConfig,))
    Sac = dataclasses.make_dataclass("Sac", [("new_weight", float, dataclasses.field(default=0.5))],
                                     bases=(SACConfig,))
    cfg = RunConfig(net=Net(), sac=Sac())
    check_bounds(cfg)
    cfg.net.new_width = 10**6
    with pytest.raises(ConfigError, match="net.new_width"):
        check_bounds(cfg)
    cfg.net.new_width = 8
    for bad in (float("inf"), float("nan"), 1e300):
        cfg.sac.new_weight = bad
        with pytest.raises(ConfigError, match="sac.new_weight"):
            check_bounds(cfg)
    cfg.sac.new_weight = 1.0
    cfg.net.num_layers = 17
    with pytest.raises(ConfigError, match="net.num_layers must be from 2 to 16"):
        check_bounds(cfg)


@pytest.mark.parametrize("text, fragment", [
    ("\x00\x00", "control characters"),
    ("close\x00 the window", "control characters"),
    ("\u200b\u200b\u200d", "no visible characters"),
    ("\u200b \ufeff", "no visible characters"),
    ("close \ud800 window", "lone surrogate"),
    ("\udfff", "lone surrogate"),
    ("x" * 1_000_000, "1000000 characters"),
])
def test_goal_text_needs_visible_valid_characters(text, fragment):
    with pytest.raises(GoalTextError, match=fragment):
        validate_goal_text(text)


def test_goal_text_in_other_scripts_is_fine():
    assert validate_goal_text("  ferme la fenêtre ") == "ferme la fenêtre"
    assert validate_goal_text("窓を閉める") == "窓を閉める"


class _Counting(TextEncoder):
    name, dim = "counting", 4

    def __init__(self, cache_size):
        super().__init__(cache_size)
        self.calls = 0

    def _encode(self, texts):
        self.calls += len(texts)
        return np.random.default_rng(len(texts)).normal(size=(len(texts), self.dim))


def test_embedding_cache_is_bounded_and_least_recently_used():
    enc = _Counting(cache_size=8)
    first = enc.encode("goal 0")
    for i in range(1, 200):
        enc.encode(f"goal {i}")
        if i % 3 == 0:
            np.testing.assert_array_equal(enc.encode("goal 0"), first)  # kept: recently used
    assert len(enc._cache) == 8
    calls = enc.calls
    enc.encode("goal 0")
    assert enc.calls == calls  # still cached
    enc.encode("goal 1")
    assert enc.calls == calls + 1  # long evicted: encoded again
    batch = enc.encode([f"batch {i}" for i in range(20)])  # a batch larger than the cache
    assert batch.shape == (20, 4) and len(enc._cache) == 8


def test_metrics_rewrite_on_resume_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "x": s / 10}) for s in (100, 200, 300, 400)]
    path.write_text("\n".join(lines) + "\n")

    def killed(p, data):  # the process dies half way through writing the new file
        with open(p, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_fsync_write", killed)
    with pytest.raises(KeyboardInterrupt):
        JsonlWriter(path, truncate_after={"step": 200})
    assert path.read_text() == "\n".join(lines) + "\n"  # the whole history is still there
    monkeypatch.undo()
    w = JsonlWriter(path, truncate_after={"step": 200})
    w.write({"step": 300, "x": 3.5})
    w.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [100, 200, 300]


def test_meta_build_does_not_leak_to_other_threads(tmp_path):
    """The shape-only build on the meta device changes the default device of the loading thread
    only: a tensor made meanwhile in another thread is a real CPU tensor."""
    run = _run(tmp_path)
    made = []
    stop = threading.Event()

    def other():
        while not stop.is_set():
            made.append(torch.zeros(1).device.type)

    t = threading.Thread(target=other)
    t.start()
    try:
        for _ in range(5):
            load_agent(run)
    finally:
        stop.set()
        t.join()
    assert made and set(made) == {"cpu"}
