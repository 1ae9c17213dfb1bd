"""What each agent kind is made of, so that code asks what an agent can do, not which one it is.

| kind  | actor and critics read             | backbone        | text | context (adapts) | routing |
|-------|------------------------------------|-----------------|------|------------------|---------|
| cmrl  | z from PEARL's encoder + goal text | soft-modular    | yes  | yes              | yes     |
| pearl | z from PEARL's encoder             | MLP             | no   | yes              | no      |
| sm    | a one-hot task id (the oracle)     | soft-modular    | no   | no               | yes     |
| care  | the goal-text embedding            | CARE mixture    | yes  | no               | no      |
| rl2   | (obs, prev. action, reward, done)  | GRU (PPO)       | no   | hidden state     | no      |
| maml  | the observation                    | MLP (PPO outer) | no   | gradient steps   | no      |

`care` (Sodhani et al. 2021) encodes the state with a mixture of k encoders weighted by attention
over the goal-text embedding (`mixture_encoder.py`); with no context encoder it cannot adapt from
transitions, so its zero-shot and adapted behaviour are the same. It answers whether the words alone
already do what cmrl's context does.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import AGENT_KINDS, ConfigError


@dataclass(frozen=True)
class AgentKind:
    name: str
    backbone: str
    """Actor and critic body: `modular` (soft modularization), `mlp` or `care` (networks.py)."""
    uses_text: bool
    """Reads the goal-text embedding (the run needs a text encoder)."""
    uses_context: bool
    """Infers z from transitions with PEARL's context encoder, so it can adapt within a task."""
    has_routing: bool
    """Its actor has soft-modular routing to inspect (routing_analysis, the app's heatmaps)."""
    uses_task_id: bool
    """Conditioned on a one-hot id of the meta-train task (the sm oracle)."""
    reads: str = ""
    """What its actor and critics are conditioned on, in words (for pages and tables)."""
    color: str = "#7f7f7f"
    """Its colour in figures (the report's and the app's)."""
    adapts_by: str = ""
    """How it adapts within a task: `context` (PEARL's posterior over z), `hidden_state` (rl2's GRU
    carried across a trial's episodes), `gradient` (maml's inner policy-gradient steps), or ``
    (not at all: sm, care)."""
    on_policy: bool = False
    """Trained on-policy by `algo/onpolicy.py` (rl2, maml), not by the SAC trainer."""

    @property
    def goal_text_note(self) -> str | None:
        """What a user who types a goal for this agent should know (None: it reads the words)."""
        if self.uses_text and self.uses_context:
            return None
        if self.uses_text:
            return (f"A {self.name} agent reads the goal text but cannot adapt from transitions: "
                    "its episodes after adaptation behave like the first.")
        if self.uses_task_id:
            return (f"The {self.name} oracle does not read the goal text: it is told the task id "
                    "(none for a held-out task).")
        return f"A {self.name} agent does not read the goal text: it adapts from transitions alone."

    @property
    def no_routing_note(self) -> str:
        return (f"no routing: a {self.name} agent's actor is "
                + ("a plain MLP" if self.backbone == "mlp" else f"a {self.backbone} network"))

    @property
    def no_posterior_note(self) -> str:
        if self.adapts_by == "hidden_state":
            return (f"no context posterior: a {self.name} agent adapts through its GRU's hidden "
                    f"state, carried across the episodes of a trial (it reads {self.reads})")
        if self.adapts_by == "gradient":
            return (f"no context posterior: a {self.name} agent adapts by policy-gradient steps "
                    "on its adaptation episodes")
        return (f"no context posterior: a {self.name} agent infers nothing from transitions "
                f"(it reads {self.reads})")


KINDS: dict[str, AgentKind] = {k.name: k for k in (
    AgentKind("cmrl", "modular", uses_text=True, uses_context=True, has_routing=True,
              uses_task_id=False, reads="z from the context encoder and the goal text",
              color="#1f77b4", adapts_by="context"),
    AgentKind("pearl", "mlp", uses_text=False, uses_context=True, has_routing=False,
              uses_task_id=False, reads="z from the context encoder", color="#ff7f0e",
              adapts_by="context"),
    AgentKind("sm", "modular", uses_text=False, uses_context=False, has_routing=True,
              uses_task_id=True, reads="a one-hot task id", color="#2ca02c"),
    AgentKind("care", "care", uses_text=True, uses_context=False, has_routing=False,
              uses_task_id=False, reads="the goal-text embedding", color="#9467bd"),
    AgentKind("rl2", "gru", uses_text=False, uses_context=False, has_routing=False,
              uses_task_id=False, adapts_by="hidden_state", on_policy=True,
              reads="(obs, previous action, reward, done) through a GRU", color="#8c564b"),
    AgentKind("maml", "mlp", uses_text=False, uses_context=False, has_routing=False,
              uses_task_id=False, adapts_by="gradient", on_policy=True,
              reads="the observation", color="#e377c2"),
)}
SAC_KINDS = tuple(k for k, v in KINDS.items() if not v.on_policy)
"""The kinds the SAC trainer and its update benchmarks build (`MetaAgent`)."""
assert tuple(KINDS) == AGENT_KINDS, "config.AGENT_KINDS and agent_kinds.KINDS disagree"


def agent_kind(name: str) -> AgentKind:
    """The capabilities of an agent kind; ConfigError for an unknown one."""
    if name not in KINDS:
        raise ConfigError(f"unknown agent {name!r}; choose one of {', '.join(KINDS)}")
    return KINDS[name]
