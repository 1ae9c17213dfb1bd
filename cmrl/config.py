"""Configuration: the single source of truth for a run, saved as JSON with every checkpoint.

Every field has a docstring-style comment; `RunConfig.to_dict()` / `RunConfig.from_dict()` round-trip
exactly, and `from_dict` rejects unknown keys and wrongly typed values with a clear message (a config
file is user input too).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AGENT_KINDS = ("cmrl", "pearl", "sm", "care", "rl2", "maml")
ROUTING_INPUTS = ("obs_x_cond", "cond")
COND_EMBEDS = ("linear", "mlp")
GOAL_ENCODINGS = ("sentence", "verb_object")
BC_FORMS = ("sum", "td3bc")
KL_PRIORS = ("standard", "text")
CONTEXT_FROM = ("variation", "task")
UNRELABELLED_CONTEXT_FROM = ("variation", "task")
UPDATE_IMPLS = ("auto", "eager", "graphed")
RETIRED_UPDATE_IMPLS = {"fast": "eager", "compiled": "eager"}
"""Retired `sac.update_impl` values (docs/speed_history.md) -> the path that runs them now (the same
losses): a config or checkpoint naming one loads as that path, with a warning."""
TEXT_ENCODERS = ("auto", "clip", "minilm")
PRIOR_DATA = ("none", "expert")
MODES = ("online", "offline")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "auto")


class ConfigError(ValueError):
    """A configuration value or file is invalid."""


@dataclass
class BenchmarkConfig:
    name: str = "ml4"
    """`ml4` (drawer-open, drawer-close, window-open -> window-close), `ml1:<env>`, `ml10`, `ml45`,
    `point` (a 2-D point robot with its goal hidden on a half circle, 20-step episodes: the sanity
    benchmark for adaptation) or `custom` (then `train_tasks` / `test_tasks` name Meta-World v3
    envs)."""
    train_tasks: list[str] = field(default_factory=list)
    """Meta-train env names for `custom` (filled in from the benchmark for the others)."""
    test_tasks: list[str] = field(default_factory=list)
    """Held-out meta-test env names for `custom` (never trained on)."""
    horizon: int = 200
    """Episode length in env steps (Meta-World's own default is 500)."""
    seed: int = 0
    """Seed of Meta-World's goal-variation sampling (50 variations per env)."""


@dataclass
class NetworkConfig:
    latent_dim: int = 7
    """Size of the context variable z."""
    encoder_hidden: list[int] = field(default_factory=lambda: [128, 128])
    """Hidden widths of the per-transition context encoder (the seed: a 2-layer MLP of 128)."""
    goal_proj_dim: int = 32
    """Width the goal-text embedding is projected to before it joins each transition's input."""
    goal_factor: bool = True
    """CMRL: the goal text adds its own Gaussian factor to the product (a goal alone moves the prior)."""
    num_layers: int = 4
    """Soft-modular networks: module layers L."""
    num_modules: int = 4
    """Soft-modular networks: modules per layer n."""
    module_width: int = 64
    """Soft-modular networks: width of each module. 64 is our CPU default (its speed:
    docs/speed.md); Soft-Module's "deep" configuration is 4 x 4 x 128."""
    embed_dim: int = 64
    """Soft-modular networks: width D of the observation and condition embeddings."""
    gating_hidden: int = 64
    """Soft-modular networks: width of the routing network's hidden layers."""
    gating_layers: int = 2
    """Soft-modular networks: hidden layers of the routing network."""
    mlp_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    """PEARL baseline: hidden widths of the plain MLP actor and critics."""
    obs_takes_context: bool = True
    """Modular nets also see the condition (z or one-hot) beside the observation, as Soft-Module's
    conditioned variant does; routing is driven by the condition either way."""
    obs_norm: bool = True
    """Standardise observations with per-dimension mean/std of the data a run first trains on
    (offline dataset, prior data or warm-up buffer), frozen then and saved with the weights
    (`normalizer.py`). Checkpoints from before this option load with identity statistics."""
    routing_input: str = "obs_x_cond"
    """What the routing network reads. `obs_x_cond`: the observation embedding times the condition
    embedding (Soft-Module), so the module path can change with the state. `cond`: the condition
    alone (task-level routing), so a task's module path is one fixed choice that carries over
    unchanged to a new object's states."""
    cond_embed: str = "linear"
    """Condition embedding of the routing network: `linear` (one layer) or `mlp` (two layers, as
    Soft-Module's task branch)."""
    goal_encoding: str = "sentence"
    """cmrl: how the goal text is embedded. `sentence`: the whole text at once. `verb_object`: the
    text is split by a small rule into what to do and what to act on (`goal_text.split_goal`), each
    embedded on its own, and the two embeddings concatenated."""
    text_routing: bool = False
    """cmrl: the routing network reads the goal embedding beside z. With `verb_object` goal encoding
    the object part drives the first routing layer and the verb part the later ones (the seed's
    Fig. 7: separate modules for what to act on and what to do)."""
    task_id_names: list[str] = field(default_factory=list)
    """sm oracle: the tasks that own a slot of its one-hot id (empty: the meta-train tasks). A
    fine-tuned sm keeps its source's slots, so a new task gets the all-zeros id, as at meta-test."""
    care_experts: int = 4
    """care baseline: state encoders k in the mixture (mtrl's CARE on MT10: 4)."""
    care_width: int = 50
    """care baseline: width of each state encoder (hidden layer and output), of the task encoding
    projected from the goal text and of the attention's hidden layer (mtrl's CARE: 50). The actor
    and critic trunks after the mixture are `mlp_hidden`, as pearl's."""


OFFLINE_BC_WEIGHT = 2.5
"""The behaviour term's weight when a run trains offline and sets none (TD3+BC's alpha)."""


@dataclass
class SACConfig:
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak factor of the target critics."""
    lr: float = 3e-4
    """Adam learning rate of actor, critics, context encoder and entropy temperature."""
    batch_size: int = 256
    """RL transitions per task per update (all tasks go through one batched forward pass)."""
    context_size: int = 64
    """Transitions per task the context encoder sees per update."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before the Bellman target."""
    kl_weight: float = 0.1
    """beta: weight of KL(q(z|c) || N(0, I)) in the encoder's loss."""
    init_alpha: float = 1.0
    """Initial entropy temperature."""
    target_entropy: float | None = None
    """Entropy target; None means -action_dim."""
    per_task_alpha: bool = True
    """One entropy temperature per meta-train task (Soft-Module); False: one shared."""
    grad_clip: float = 10.0
    """Gradient-norm clip for every network (0 disables)."""
    bc_weight: float | None = None
    """Behaviour-regularisation weight on the actor (see `bc_form`). None: OFFLINE_BC_WEIGHT (2.5)
    when the run trains offline, 0 online (`RunConfig.resolved`, so every entry point agrees)."""
    precision: str = "fp32"
    """`fp32`, `bf16` (autocast for the matmuls) or `auto`: bf16 on CPUs with AMX, the only place it
    paid, fp32 elsewhere (measured: docs/speed.md). Asking for bf16 on a CPU without AMX or AVX-512
    bf16 warns with the cost measured on the machine."""
    update_impl: str = "auto"
    """How the update runs; the same losses every time (`sac.py`). `eager`: op by op, the one path
    on CPU. `graphed` (CUDA only): the whole update captured once as a CUDA graph and replayed
    (`cuda_graphs.py`; on a CPU it warns and runs eager). `auto`: graphed on CUDA, eager elsewhere.
    `fast` and `compiled` are retired and load as eager (`speed_tuning.py` says why)."""
    bc_form: str = "sum"
    """How the offline behaviour term is weighted. `sum`: (alpha log pi - Q) / |Q| + bc_weight *
    sum over action dims of (mu - a)^2 (this project's first recipe; about 25x more behaviour
    cloning than TD3+BC at bc_weight 2.5). `td3bc`: TD3+BC's own form, bc_weight / |Q| *
    (alpha log pi - Q) + mean over action dims of (mu - a)^2."""
    context_dropout: float = 0.0
    """Probability, per task and update, that the encoder sees no transitions at all (the goal text
    alone must then carry the task, as in adaptation episode 0). When > 0, the other updates see a
    uniformly random number of transitions in 1..context_size. 0: always context_size."""
    kl_prior: str = "standard"
    """What the posterior's KL is measured against. `standard`: N(0, I) (PEARL). `text`: the goal
    text's own factor p(z | g) (needs `net.goal_factor`), plus beta * KL(p(z | g) || N(0, I)), so the
    words learn to predict what the context will reveal."""
    z_contrastive: float = 0.0
    """Weight of a task-discrimination (InfoNCE) loss on the encoder: the posteriors of two disjoint
    halves of a task's context must be nearer each other than to any other task's. 0 disables."""
    reward_decoder: float = 0.0
    """Weight of a reward-prediction loss on the encoder: a decoder r(s, a, s', z) must predict the
    rewards of the RL rows (or of `decoder_relabel`'s rows) from the z of their variation's context
    (VariBAD's reward decoder), so z has to say what the rewards depend on (where the goal is)
    whatever policy made the context.
    0: no decoder (and no decoder weights in the checkpoint)."""
    encoder_from_critic: bool = True
    """The critics' Bellman error trains the context encoder (PEARL). False: z reaches the critics
    detached, and the encoder learns from the KL and `reward_decoder` / `z_contrastive` alone (as
    VariBAD's encoder learns from its decoder), a target that does not move with the critics."""
    encoder_steps: int = 0
    """The encoder learns for this many gradient steps and is then frozen, so the z the actor and
    critics read stops moving under them for the rest of the run. 0: it learns throughout."""
    context_from: str = "variation"
    """Where an update's context and the RL rows it conditions come from. `variation`: one goal
    variation (PEARL's task: a context can then say where the goal is), `meta_batch` of them per
    meta-train task (`variation_batches.py`). `task`: any variation of the env, mixed (how runs
    trained before 2026-12-05; the context cannot identify a goal that way)."""
    meta_batch: int = 4
    """With `context_from = variation`: goal variations per meta-train task in each update; each
    gets its own context and batch_size // meta_batch RL rows."""
    context_relabel: float = 0.0
    """With `context_from = variation`: fraction of each context drawn from other variations of the
    task with their rewards recomputed for this one's goal (tasks with a known reward function:
    `envs/relabel.py`; elsewhere no effect). 0 disables."""
    unrelabelled_context_from: str = "variation"
    """With `context_from = variation`: where the contexts of tasks without a reward relabeller
    (`envs/relabel.py`) come from. `variation`: their own variation, as every task's. `task`: any
    variation of the task, mixed. A dataset that records one or two episodes per variation makes a
    variation's context name its episode, and the critics can then learn that episode's returns
    instead of the task's; where no relabelled context can say the goal, a task-wide one says what
    the task is and no more (docs/adaptation.md, forty-ninth round)."""
    context_window: int = 0
    """With `context_from = variation`: a context is drawn as runs of this many consecutive
    transitions (a stretch of one trajectory, as the agent's own episodes are at meta-test) instead
    of single transitions picked at random (PEARL's draw). 0: single transitions."""
    rl_relabel: float = 0.0
    """With `context_from = variation`: fraction of each variation's RL rows drawn from other
    variations of the task with their rewards recomputed for this one's goal (hindsight relabelling;
    tasks with a known reward function, as `context_relabel`). 0 disables."""
    decoder_relabel: float = 0.0
    """With `reward_decoder` and `context_from = variation`: fraction of the decoder's rows drawn
    from any variation of the task with their rewards recomputed for this one's goal, leaving the
    RL rows as they are. A variation's own rows (mostly paths straight to its goal) say little
    about where the goal is, so a decoder fitted on them alone teaches the encoder little; tasks
    with a known reward function only, as `context_relabel`. 0 disables."""
    relabel_recorded: bool = False
    """The relabelling fields above also act on push-v3 and pick-place-v3, whose relabellers recover
    the gripper's goal-free reward term from the recorded reward (close, not exact: `envs/relabel.py`).
    Off: only the point robot and reach-v3 are relabelled."""
    goal_jitter: float = 0.0
    """With `context_relabel = 1`: std (the goal's units, per axis; Meta-World: metres) of Gaussian
    noise added to each drawn variation's recorded goal before its context, the decoder's rows
    (`decoder_relabel`, then 1 too) and the belief target (`goal_supervision`) are made for it, so z
    learns goals between the few the dataset recorded. The RL rows keep their recorded rewards.
    0: the recorded goals only."""
    goal_supervision: float = 0.0
    """Weight of a loss that asks a linear head on the posterior mean to predict the goal position
    of the context's variation, as the dataset recorded it (standardised by the data's goals):
    privileged information at meta-training only, the belief supervision of Humplik et al. 2019.
    A reward flat near its goal (Meta-World's reach: within 5 cm) does not ask z for more precision
    than its plateau; this does. Nothing changes at meta-test. Needs `context_from = variation`;
    variations without a recorded goal add nothing. 0: no head (and no head weights saved)."""
    z_refine_steps: int = 0
    """At meta-test (both evaluators, adaptation episodes, the app), Adam steps that move the
    posterior's mean to fit the reward decoder to the context's own rewards before a z is drawn
    (`ContextEncoder.refine_mean`); the variance stays the product of Gaussians'. A Gaussian factor
    cannot say "the goal lies on a ring around here", so the product drifts toward where the agent
    lingered; the decoder can check a z against every reward seen. Needs `reward_decoder`; training
    is unchanged. 0: the product of Gaussians' mean, as PEARL."""
    z_refine_starts: int = 1
    """Starts of the `z_refine_steps` fit: 1, the product of Gaussians' mean alone; K > 1 adds the
    factor means of K - 1 context rows spread evenly over the context, fits from all K at once and
    keeps the one whose fit ends with the lowest loss (fitting a goal to rewards is not convex).
    Costs K times one fit."""
    z_refine_pool: float = 0.0
    """With `z_refine_starts` > 1: the refined mean is the average of the fits whose final loss is
    within this fraction of the lowest (1 + pool times it), not the lowest alone. Where the reward
    is flat near its goal, every z in a region fits the rewards equally; their centre is the better
    guess. 0: the lowest-loss fit."""
    z_refine_lr: float = 0.05
    """Adam step size of `z_refine_steps`."""
    z_refine_prior: float = 0.01
    """Weight of |z|^2 / 2 (the N(0, I) prior) beside the decoder's summed squared error in
    `z_refine_steps`."""
    bc_only: bool = False
    """The actor's loss is behaviour cloning alone (no Q or entropy term): a baseline, and the
    check that the data path is right. Critics and encoder train as usual."""


@dataclass
class TrainConfig:
    agent: str = "cmrl"
    """`cmrl` (PEARL context + goal text -> soft-modular routing), `pearl` (MLP on [s, z]), `sm`
    (soft-modular with a one-hot task id: the multi-task oracle, no adaptation) or `care` (a
    mixture of state encoders weighted by attention over the goal text, then MLPs: CARE, no
    adaptation), `rl2` (a GRU policy adapting through its hidden state, PPO) or `maml` (a
    Gaussian MLP adapting by policy-gradient steps, outer loop PPO); the last two train on-policy
    with the `onpolicy` section. What each can do: `agent_kinds.py`."""
    mode: str = "online"
    """`online`: Algorithm 1, collecting and updating (mixing in `offline` data when it is set).
    `offline`: gradient steps on the `offline` dataset only."""
    steps: int = 20000
    """Budget in total: env steps collected (online) or gradient steps (offline)."""
    seed: int = 0
    """Seed of networks, sampling and collection."""
    text_encoder: str = "auto"
    """`clip`, `minilm` or `auto` (CLIP when its weights are found locally, else MiniLM)."""
    clip_pretrained: str = "laion2b_s34b_b79k"
    """open_clip weights for ViT-B-32: a tag found in the Hugging Face cache, a local file, or `none`
    (random weights: tests the plumbing only)."""
    envs_per_task: int = 4
    """Environments per meta-train task stepped in lockstep during collection (one batched forward)."""
    prior_rounds: int = 1
    """Per iteration: episodes per env collected with z from the prior (fill the context buffer)."""
    posterior_rounds: int = 1
    """Per iteration: episodes per env collected with z from the posterior (RL buffer only)."""
    updates_per_step: float = 0.5
    """Gradient updates per collected env step (summed over tasks)."""
    warmup_steps: int = 2400
    """Env steps collected before the first update."""
    replay_capacity: int = 200000
    """Transitions kept per task."""
    prior_data: str = "none"
    """`none` or `expert`: prefill meta-train buffers with noisy scripted-expert episodes (never for
    held-out tasks)."""
    prior_episodes: int = 20
    """Expert episodes per meta-train task when `prior_data` is `expert`."""
    prior_noise: float = 0.3
    """Gaussian action-noise std of the scripted expert's prior data."""
    offline: str | None = None
    """Path of a Minari dataset root to train from (offline mode); None: online Algorithm 1."""
    offline_ratio: float = 0.5
    """After resuming an offline run online: fraction of each RL batch drawn from the offline data."""
    checkpoint_every: int = 5000
    """Checkpoint period (env steps online, gradient steps offline)."""
    eval_every: int = 5000
    """Evaluation period (same unit); 0 disables evaluation during training."""
    eval_variations: int = 2
    """Goal variations per task in each evaluation during training."""
    critic_warmup_updates: int = 0
    """The first N gradient updates train the critics and encoder only; actor and temperatures
    wait. Fine-tuning uses it so a pretrained policy is not steered by critics that have not yet
    seen the new task's rewards."""
    init_from: str | None = None
    """Run directory whose weights initialise this run (fine-tuning, `python -m cmrl finetune`);
    same agent kind and architecture. Per-task temperatures are the source's when it trained on
    the same tasks, else each starts at the mean of the source's; rl2 and maml take the weights
    alone, with a fresh optimiser."""
    eval_at_start: bool = False
    """Evaluate once before any training (the zero-shot point of a fine-tuning curve)."""
    device: str = "auto"
    """`auto` (CUDA when available), `cpu` or `cuda`."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""
    tensorboard: bool = False
    """Also write TensorBoard event files to RUN/tb with the same keys as metrics.jsonl (needs the
    optional `tensorboard` package; then `tensorboard --logdir runs`)."""


@dataclass
class OnPolicyConfig:
    """The on-policy agents `rl2` and `maml` (`algo/onpolicy.py`). Of the train section they read
    steps, seed, device, threads, checkpoint_every, eval_every, eval_variations and eval_at_start;
    the net and sac sections are not theirs."""

    tasks_per_iteration: int = 20
    """Meta-batch: goal variations (tasks) sampled per iteration, each with its own rollouts."""
    trial_episodes: int = 4
    """rl2: episodes per trial (the hidden state is carried through them, reset between trials);
    4 = the evaluator's 3 adaptation episodes + 1 evaluation episode."""
    rl2_hidden: int = 128
    """rl2: GRU width."""
    rl2_embed: int = 64
    """rl2: width of the tanh layer that embeds (obs, previous action, reward, done) for the GRU."""
    policy_hidden: list[int] = field(default_factory=lambda: [100, 100])
    """maml: hidden widths of the tanh Gaussian MLP policy (garage's MAML: 100 x 100)."""
    init_std: float = 1.0
    """Initial action std of the Gaussian policies (a learned, state-independent log-std)."""
    adapt_episodes: int = 3
    """maml: episodes per task with the pre-update policy, the inner step's data (the evaluator's
    default adaptation episodes)."""
    post_episodes: int = 3
    """maml: episodes per task with the adapted policy, the outer (PPO) step's data."""
    inner_lr: float = 0.1
    """maml: step size of the inner vanilla policy-gradient step (garage, Meta-World+: 0.1)."""
    inner_steps: int = 1
    """maml: inner gradient steps, each on the same adaptation episodes."""
    first_order: bool = False
    """maml: first-order MAML (the outer gradient ignores the inner step's second derivatives)."""
    discount: float = 0.99
    """Discount factor of returns and advantages (rl2: across the episodes of a trial, as RL2)."""
    gae_lambda: float = 0.95
    """GAE's lambda (rl2: value head; maml: the linear feature baseline)."""
    ppo_clip: float = 0.2
    """PPO's ratio clip."""
    ppo_epochs: int = 10
    """PPO epochs over each iteration's data (maml: outer steps, each through the inner step)."""
    ppo_minibatches: int = 4
    """rl2: minibatches (of whole trials) per PPO epoch; maml: always the whole meta-batch."""
    ppo_lr: float = 5e-4
    """Adam learning rate of the PPO update (rl2: Meta-World+'s 5e-4)."""
    entropy_coef: float = 5e-3
    """Weight of the policy-entropy bonus in the PPO loss."""
    value_coef: float = 0.5
    """rl2: weight of the value loss."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip of the PPO update (0 disables)."""
    ppo_reward_scale: float = 0.1
    """Rewards are multiplied by this for advantages, value targets and rl2's reward input
    (Meta-World's per-step rewards reach 10)."""


@dataclass
class RunConfig:
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    net: NetworkConfig = field(default_factory=NetworkConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError("config must be a JSON object")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config sections: {sorted(unknown)}")
        parts = {}
        impl = data.get("sac", {}).get("update_impl") if isinstance(data.get("sac"), dict) else None
        if isinstance(impl, str) and impl in RETIRED_UPDATE_IMPLS:
            warnings.warn(f"sac.update_impl={impl!r} is retired (docs/speed_history.md); it runs "
                          f"as {RETIRED_UPDATE_IMPLS[impl]!r}", UserWarning, stacklevel=2)
            data = {**data, "sac": {**data["sac"], "update_impl": RETIRED_UPDATE_IMPLS[impl]}}
        for f in dataclasses.fields(cls):
            parts[f.name] = _build(_SECTIONS[f.name], data.get(f.name, {}), f.name)
        cfg = cls(**parts)
        cfg.validate()
        return cfg

    def updated(self, fields: dict[str, Any]) -> "RunConfig":
        """A copy with {"section.field": value} set, type-checked and validated like a file."""
        data = self.to_dict()
        for key, value in fields.items():
            section, _, name = key.partition(".")
            if section not in data or name not in data[section]:
                raise ConfigError(f"unknown config field {key!r} (sections: {', '.join(data)})")
            data[section][name] = value
        return RunConfig.from_dict(data)

    def resolved(self) -> "RunConfig":
        """A copy with the mode-dependent defaults filled in (what a run saves and trains with):
        `sac.bc_weight` None becomes OFFLINE_BC_WEIGHT offline and 0 online."""
        if self.sac.bc_weight is not None:
            return self
        weight = OFFLINE_BC_WEIGHT if self.train.mode == "offline" else 0.0
        return self.updated({"sac.bc_weight": weight})

    def validate(self) -> None:
        t = self.train
        if t.agent not in AGENT_KINDS:
            raise ConfigError(f"unknown agent {t.agent!r}; choose one of {', '.join(AGENT_KINDS)}")
        for name, choices in CHOICES.items():
            section, _, attr = name.partition(".")
            value = getattr(getattr(self, section), attr)
            if value not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        if t.mode == "offline" and not t.offline:
            raise ConfigError("offline mode needs a dataset (train.offline / --offline DIR)")
        for name, value in (("steps", t.steps), ("envs_per_task", t.envs_per_task),
                            ("horizon", self.benchmark.horizon), ("batch_size", self.sac.batch_size),
                            ("context_size", self.sac.context_size),
                            ("num_layers", self.net.num_layers),
                            ("num_modules", self.net.num_modules),
                            ("care_experts", self.net.care_experts),
                            ("care_width", self.net.care_width)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.sac.bc_weight is not None and not self.sac.bc_weight >= 0.0:
            raise ConfigError(f"sac.bc_weight must be >= 0 (or null: by mode), got {self.sac.bc_weight}")
        if not 0.0 <= self.sac.context_dropout <= 1.0:
            raise ConfigError(f"sac.context_dropout must be in [0, 1], got {self.sac.context_dropout}")
        if not 0.0 <= self.sac.context_relabel <= 1.0:
            raise ConfigError(f"sac.context_relabel must be in [0, 1], got {self.sac.context_relabel}")
        if not 0.0 <= self.sac.rl_relabel <= 1.0:
            raise ConfigError(f"sac.rl_relabel must be in [0, 1], got {self.sac.rl_relabel}")
        if not 0.0 <= self.sac.decoder_relabel <= 1.0:
            raise ConfigError(f"sac.decoder_relabel must be in [0, 1], got {self.sac.decoder_relabel}")
        if self.sac.decoder_relabel > 0 and self.sac.reward_decoder <= 0:
            raise ConfigError("sac.decoder_relabel relabels the reward decoder's rows: set "
                              "sac.reward_decoder > 0 too")
        if self.sac.decoder_relabel > 0 and self.sac.context_from != "variation":
            raise ConfigError("sac.decoder_relabel needs sac.context_from = variation (a goal to "
                              "relabel for)")
        if not 0.0 <= self.sac.goal_jitter <= 1.0:
            raise ConfigError(f"sac.goal_jitter must be in [0, 1], got {self.sac.goal_jitter}")
        if self.sac.goal_jitter > 0 and (self.sac.context_relabel != 1.0 or (
                self.sac.reward_decoder > 0 and self.sac.decoder_relabel != 1.0)):
            raise ConfigError("sac.goal_jitter moves the goal the contexts (and the decoder's rows) are "
                              "relabelled for; rows kept with their recorded rewards would contradict "
                              "it: set sac.context_relabel = 1 (and sac.decoder_relabel = 1 with a "
                              "reward decoder)")
        if not 1 <= self.sac.meta_batch <= self.sac.batch_size:
            raise ConfigError(f"sac.meta_batch must be from 1 to sac.batch_size, got "
                              f"{self.sac.meta_batch}")
        if not self.sac.encoder_from_critic and not (self.sac.reward_decoder > 0
                                                     or self.sac.z_contrastive > 0
                                                     or self.sac.goal_supervision > 0):
            raise ConfigError("sac.encoder_from_critic=false leaves the context encoder only the KL to "
                              "learn from: set sac.reward_decoder, sac.z_contrastive or "
                              "sac.goal_supervision > 0")
        if self.sac.encoder_steps < 0:
            raise ConfigError(f"sac.encoder_steps must be >= 0, got {self.sac.encoder_steps}")
        if self.sac.context_window < 0:
            raise ConfigError(f"sac.context_window must be >= 0, got {self.sac.context_window}")
        if self.sac.z_refine_steps < 0 or self.sac.z_refine_lr <= 0 or self.sac.z_refine_prior < 0:
            raise ConfigError("sac.z_refine_steps and sac.z_refine_prior must be >= 0 and "
                              f"sac.z_refine_lr > 0, got {self.sac.z_refine_steps}, "
                              f"{self.sac.z_refine_prior}, {self.sac.z_refine_lr}")
        if self.sac.z_refine_pool < 0:
            raise ConfigError(f"sac.z_refine_pool must be >= 0, got {self.sac.z_refine_pool}")
        if self.sac.z_refine_starts < 1:
            raise ConfigError(f"sac.z_refine_starts must be >= 1, got {self.sac.z_refine_starts}")
        if self.sac.z_refine_steps > 0 and self.sac.reward_decoder <= 0:
            raise ConfigError("sac.z_refine_steps fits z to the reward decoder: set "
                              "sac.reward_decoder > 0 too")
        if not 0.0 <= self.sac.reward_decoder <= 100.0:
            raise ConfigError(f"sac.reward_decoder must be in [0, 100], got {self.sac.reward_decoder}")
        if not 0.0 <= self.sac.goal_supervision <= 100.0:
            raise ConfigError(f"sac.goal_supervision must be in [0, 100], got "
                              f"{self.sac.goal_supervision}")
        if self.sac.goal_supervision > 0 and self.sac.context_from != "variation":
            raise ConfigError("sac.goal_supervision needs sac.context_from = variation (a goal to "
                              "predict per context)")
        if not 0.0 <= self.sac.z_contrastive <= 100.0:
            raise ConfigError(f"sac.z_contrastive must be in [0, 100], got {self.sac.z_contrastive}")
        if self.sac.kl_prior == "text" and not self.net.goal_factor:
            raise ConfigError("sac.kl_prior 'text' needs net.goal_factor (the text's own factor)")
        if self.net.num_layers < 2:
            raise ConfigError("num_layers must be >= 2 (routing sits between module layers)")
        o = self.onpolicy
        for name in ("tasks_per_iteration", "trial_episodes", "rl2_hidden", "rl2_embed",
                     "adapt_episodes", "post_episodes", "ppo_epochs", "ppo_minibatches"):
            if getattr(o, name) < 1:
                raise ConfigError(f"onpolicy.{name} must be >= 1, got {getattr(o, name)}")
        if o.inner_steps < 0 or not o.policy_hidden:
            raise ConfigError("onpolicy.inner_steps must be >= 0 and policy_hidden non-empty")
        for name in ("init_std", "inner_lr", "ppo_lr", "ppo_clip", "ppo_reward_scale"):
            if not getattr(o, name) > 0:
                raise ConfigError(f"onpolicy.{name} must be > 0, got {getattr(o, name)}")
        if not (0 <= o.discount <= 1 and 0 <= o.gae_lambda <= 1):
            raise ConfigError("onpolicy.discount and onpolicy.gae_lambda must be in [0, 1]")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


_SECTIONS = {"benchmark": BenchmarkConfig, "net": NetworkConfig, "sac": SACConfig,
             "train": TrainConfig, "onpolicy": OnPolicyConfig}

CHOICES: dict[str, tuple[str, ...]] = {
    "train.text_encoder": TEXT_ENCODERS, "train.prior_data": PRIOR_DATA, "train.mode": MODES,
    "train.device": DEVICES, "sac.precision": PRECISIONS, "sac.update_impl": UPDATE_IMPLS,
    "net.routing_input": ROUTING_INPUTS, "net.cond_embed": COND_EMBEDS,
    "net.goal_encoding": GOAL_ENCODINGS, "sac.bc_form": BC_FORMS, "sac.kl_prior": KL_PRIORS,
    "sac.context_from": CONTEXT_FROM, "sac.unrelabelled_context_from": UNRELABELLED_CONTEXT_FROM,
}
"""The fields that take one of a few words, and those words: `validate`, the CLI and the app's
forms all read them from here (train.agent: AGENT_KINDS, checked first)."""


@dataclass(frozen=True)
class FieldInfo:
    name: str
    """"section.field"."""
    type: str
    """The annotation as written, e.g. "int", "float | None", "list[int]"."""
    default: Any
    doc: str
    choices: tuple[str, ...] | None


@functools.lru_cache(maxsize=1)
def config_fields() -> tuple[FieldInfo, ...]:
    """Every field of every section, in order, with its type, default, docstring and choices:
    what a command line or a form is generated from."""
    import ast
    import inspect
    import sys

    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(sys.modules[__name__]))
    classes = {cls.__name__: sec for sec, cls in _SECTIONS.items()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in classes:
            body = node.body
            for a, b in zip(body, body[1:]):
                if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
                        and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                        and isinstance(b.value.value, str)):
                    docs[f"{classes[node.name]}.{a.target.id}"] = " ".join(b.value.value.split())
    out = []
    for sec, cls in _SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            name = f"{sec}.{f.name}"
            out.append(FieldInfo(name, str(f.type), getattr(defaults, f.name), docs.get(name, ""),
                                 AGENT_KINDS if name == "train.agent" else CHOICES.get(name)))
    return tuple(out)


def _build(section_cls, data: Any, section: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config section {section!r} must be an object")
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown keys in config section {section!r}: {sorted(unknown)}")
    defaults = section_cls()
    values = {}
    for name, value in data.items():
        default = getattr(defaults, name)
        values[name] = _check_type(value, default, f"{section}.{name}")
    return section_cls(**values)


def _check_type(value: Any, default: Any, where: str) -> Any:
    """Accept a value if it has the default's JSON type (ints allowed for floats, None for optionals)."""
    if value is None:
        if default is None or where in _OPTIONAL:
            return None
        raise ConfigError(f"{where} may not be null")
    if isinstance(default, bool) or (default is None and isinstance(value, bool)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) or where in _OPTIONAL_FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, str) or where in _OPTIONAL_STR:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        kind = type(default[0]) if default else str
        if not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of {kind.__name__}")
        return list(value)
    raise ConfigError(f"{where}: unsupported value {value!r}")


_OPTIONAL = {"sac.target_entropy", "sac.bc_weight", "train.offline", "train.init_from"}
_OPTIONAL_FLOAT = {"sac.target_entropy", "sac.bc_weight"}
_OPTIONAL_STR = {"train.offline", "train.init_from"}


# == Bounds: a config file is user input, so every value has a range (`check_bounds`) ==============
# A field listed in LIMITS gets that range (for a list: the range of each item). Fields not listed
# fall back by kind, so fields added later are covered too: any other int in `net` is a width or a
# count (memory), NET_INT_DEFAULT; any other int, INT_DEFAULT; any float must be finite and within
# FLOAT_DEFAULT; lists and strings have length caps. Bools and None are always fine.
LIMITS: dict[str, tuple[float, float]] = {
    "benchmark.horizon": (1, 100_000),
    "net.latent_dim": (1, 256),
    "net.encoder_hidden": (1, 4096),
    "net.goal_proj_dim": (1, 4096),
    "net.num_layers": (2, 16),
    "net.num_modules": (1, 32),
    "net.care_experts": (1, 32),
    "net.module_width": (1, 4096),
    "net.embed_dim": (1, 4096),
    "net.gating_hidden": (1, 4096),
    "net.gating_layers": (0, 8),
    "net.mlp_hidden": (1, 4096),
    "sac.batch_size": (1, 1 << 20),
    "sac.context_size": (1, 1 << 16),
    "sac.z_refine_steps": (0, 1000),
    "sac.z_refine_starts": (1, 64),
    "train.steps": (1, 10**12),
    "train.envs_per_task": (1, 1024),
    "train.replay_capacity": (1, 10**9),
    "onpolicy.tasks_per_iteration": (1, 4096),
    "onpolicy.trial_episodes": (1, 1000),
    "onpolicy.rl2_hidden": (1, 4096),
    "onpolicy.rl2_embed": (1, 4096),
    "onpolicy.policy_hidden": (1, 4096),
    "onpolicy.adapt_episodes": (1, 1000),
    "onpolicy.post_episodes": (1, 1000),
    "onpolicy.inner_steps": (0, 100),
    "onpolicy.ppo_epochs": (1, 1000),
    "onpolicy.ppo_minibatches": (1, 4096),
}
LIST_LIMITS: dict[str, int] = {"net.encoder_hidden": 8, "net.mlp_hidden": 8,
                               "onpolicy.policy_hidden": 8}
NET_INT_DEFAULT = (0, 4096)
INT_DEFAULT = (-(2**53), 2**53)
FLOAT_DEFAULT = (-1e12, 1e12)
MAX_LIST_LEN = 256
MAX_STR_LEN = 4096


def check_bounds(cfg: RunConfig) -> None:
    """ConfigError naming the first field outside its range (see LIMITS)."""
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        for f in dataclasses.fields(part):
            where = f"{section.name}.{f.name}"
            value = getattr(part, f.name)
            if isinstance(value, (list, tuple)):
                cap = LIST_LIMITS.get(where, MAX_LIST_LEN)
                if len(value) > cap:
                    raise ConfigError(f"{where} has {len(value)} entries; at most {cap} are allowed")
                for item in value:
                    _check_bound(item, where)
            else:
                _check_bound(value, where)


def _check_bound(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        lo, hi = LIMITS.get(where, NET_INT_DEFAULT if where.startswith("net.") else INT_DEFAULT)
    elif isinstance(value, float):
        lo, hi = LIMITS.get(where, FLOAT_DEFAULT)
        if value != value:
            raise ConfigError(f"{where} is NaN")
    elif isinstance(value, str):
        if len(value) > MAX_STR_LEN:
            raise ConfigError(f"{where} has {len(value)} characters; at most {MAX_STR_LEN} are "
                              "allowed")
        return
    else:
        raise ConfigError(f"{where}: unsupported value of type {type(value).__name__}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where} must be from {lo:g} to {hi:g}, got {_number(value)}")


def _number(value: float) -> str:
    """A number for a message; a huge int by its size (str() of one can itself raise)."""
    if isinstance(value, int) and abs(value) >= 10**15:
        return f"a {value.bit_length() * 3 // 10 + 1}-digit number"
    return f"{value:g}"
# == end of bounds ==================================================================================
