"""Shared test setup: headless rendering, offline Hugging Face, one torch thread, tiny configs."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from cmrl.config import BenchmarkConfig, NetworkConfig, RunConfig, SACConfig, TrainConfig  # noqa: E402

ML4_TRAIN = ["drawer-open-v3", "drawer-close-v3", "window-open-v3"]
OBS_DIM, ACT_DIM = 39, 4


def tiny_config(kind: str = "cmrl", num_layers: int = 3, num_modules: int = 2,
                **sac_overrides) -> RunConfig:
    """A RunConfig of the given agent kind with networks small enough for fast CPU tests."""
    net = NetworkConfig(latent_dim=5, encoder_hidden=[32, 32], goal_proj_dim=8, goal_factor=True,
                        num_layers=num_layers, num_modules=num_modules, module_width=16,
                        embed_dim=16, gating_hidden=16, gating_layers=2, mlp_hidden=[32, 32])
    sac = SACConfig(batch_size=32, context_size=16, **sac_overrides)
    train = TrainConfig(agent=kind, steps=100, warmup_steps=0, device="cpu",
                        text_encoder="minilm" if kind == "cmrl" else "auto")
    cfg = RunConfig(benchmark=BenchmarkConfig(), net=net, sac=sac, train=train)
    cfg.validate()
    return cfg


@pytest.fixture(scope="session")
def minilm():
    from cmrl.nets.text_encoders import get_text_encoder

    return get_text_encoder("minilm", verbose=False)
