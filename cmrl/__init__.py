"""CMRL: Compositional Meta-RL -- PEARL's context encoder, conditioned on the goal text, routing a
soft-modularized SAC policy; with PEARL, soft-modularization and CARE baselines on Meta-World.

Public API: `load_agent`, `train`, `RunConfig` and its sections, `generate_dataset` / `load_dataset`
(in `cmrl.data`), `evaluate` (`TrainedAgent.evaluate`), `rollout` (`TrainedAgent.rollout`).
This package never imports gradio.
"""

from ._version import __version__  # noqa: F401

from .algo.trained_agent import TrainedAgent, load_agent  # noqa: E402
from .runs.checkpoint import CheckpointError  # noqa: E402
from .config import (BenchmarkConfig, ConfigError, NetworkConfig, RunConfig, SACConfig,  # noqa: E402
                     TrainConfig)
from .envs.tasks import GOAL_TEXTS, goal_texts, resolve_benchmark  # noqa: E402
from .nets.text_encoders import GoalTextError, TextEncoderError  # noqa: E402
from .algo.onpolicy import train  # noqa: E402  (the SAC trainer, or rl2's and maml's)
from .experiments import routing_analysis  # noqa: E402,F401

__all__ = ["BenchmarkConfig", "CheckpointError", "ConfigError", "GOAL_TEXTS", "GoalTextError",
           "NetworkConfig", "RunConfig", "SACConfig", "TextEncoderError", "TrainConfig",
           "TrainedAgent", "goal_texts", "load_agent", "resolve_benchmark", "train"]
