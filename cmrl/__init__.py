"""CMRL: Compositional Meta-RL -- PEARL's context encoder, conditioned on the goal text, routing a
soft-modularized SAC policy; with PEARL, soft-modularization and CARE baselines on Meta-World.

Public API: `load_agent`, `train`, `RunConfig` and its sections, `generate_dataset` / `load_dataset`
(in `cmrl.data`), `evaluate` (`TrainedAgent.evaluate`), `rollout` (`TrainedAgent.rollout`).
This package never imports gradio.
"""

__version__ = "0.1.0"

from .api import TrainedAgent, load_agent  # noqa: E402
from .checkpoint import CheckpointError  # noqa: E402
from .config import (BenchmarkConfig, ConfigError, NetworkConfig, RunConfig, SACConfig,  # noqa: E402
                     TrainConfig)
from .tasks import GOAL_TEXTS, goal_texts, resolve_benchmark  # noqa: E402
from .text_encoders import GoalTextError, TextEncoderError  # noqa: E402
from .trainer import train  # noqa: E402
from . import routing_analysis  # noqa: E402,F401

__all__ = ["BenchmarkConfig", "CheckpointError", "ConfigError", "GOAL_TEXTS", "GoalTextError",
           "NetworkConfig", "RunConfig", "SACConfig", "TextEncoderError", "TrainConfig",
           "TrainedAgent", "goal_texts", "load_agent", "resolve_benchmark", "train"]
