"""The method variants of issue 11, each on its own: task-level routing, MLP condition embedding,
verb/object goal encoding and routing, context dropout, the text prior, the contrastive term, the
TD3+BC form; the zero-shot episode of the evaluator; named variants and `--set` on the CLI."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from cmrl.algo.agent import MetaAgent, TaskBelief
from cmrl.config import ConfigError, NetworkConfig, RunConfig
from cmrl.nets.context_encoder import kl_gaussians, kl_to_standard_normal, task_contrastive_loss
from cmrl.nets.goal_text import embed_goals, goal_dim, split_goal
from cmrl.nets.modular_net import SoftModularNet
from cmrl.algo.sac import SACLearner
from cmrl.algo.trainer import Trainer
from cmrl.variants import VARIANTS, variant_fields, variant_of
from conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config
from test_networks import _batch

TEXT_DIM = 384
TRANSITION_DIM = 2 * OBS_DIM + ACT_DIM + 1


def _cfg(kind: str = "cmrl", **fields) -> RunConfig:
    return tiny_config(kind).updated(fields)


def _agent(cfg: RunConfig, seed: int = 0) -> MetaAgent:
    torch.manual_seed(seed)
    return MetaAgent(cfg, OBS_DIM, ACT_DIM, TEXT_DIM if cfg.train.agent == "cmrl" else 0, ML4_TRAIN)


def _goal(agent: MetaAgent, T: int = 3, seed: int = 2) -> torch.Tensor:
    g = torch.randn(T, agent.goal_dim, generator=torch.Generator().manual_seed(seed))
    return g / g.norm(dim=-1, keepdim=True)


def _net(**fields) -> SoftModularNet:
    torch.manual_seed(0)
    cfg = NetworkConfig(num_layers=3, num_modules=3, module_width=8, embed_dim=8, gating_hidden=8,
                        **fields)
    return SoftModularNet(6, 4, 2, cfg, last_init=None)


# -- task-level routing and the condition embedding -----------------------------------------------
def test_task_level_routing_ignores_the_state():
    net = _net(routing_input="cond")
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 1, 4, generator=g).expand(1, 5, 4)
    x = torch.randn(1, 5, 6, generator=g)
    out, routing = net(x, cond)
    for p in routing.layers + [routing.final]:
        torch.testing.assert_close(p, p[:, :1].expand_as(p))  # the same for every state
    assert (out[0, 0] - out[0, 1]).abs().max() > 1e-6  # the modules still read the state


def test_soft_module_routing_follows_the_state():
    net = _net(routing_input="obs_x_cond")
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 1, 4, generator=g).expand(1, 5, 4)
    _, routing = net(torch.randn(1, 5, 6, generator=g), cond)
    assert (routing.layers[0][:, 0] - routing.layers[0][:, 1]).abs().max() > 1e-5


@pytest.mark.parametrize("routing_input", ["cond", "obs_x_cond"])
def test_mlp_condition_embedding_is_two_layers_and_routes_by_condition(routing_input):
    net = _net(routing_input=routing_input, cond_embed="mlp")
    names = {n for n, _ in net.named_parameters()}
    assert {"cond_embed.hidden.0.weight", "cond_embed.last.weight"} <= names
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 6, generator=g)
    _, r1 = net(x, torch.randn(1, 4, 4, generator=g))
    _, r2 = net(x, torch.randn(1, 4, 4, generator=g))
    assert (r1.final - r2.final).abs().max() > 1e-5


def test_old_linear_condition_embedding_keeps_its_parameter_names():
    names = {n for n, _ in _net().named_parameters()}
    assert "cond_embed.weight" in names and "cond_embed_later.weight" not in names


# -- goal texts split into verb and object ---------------------------------------------------------
@pytest.mark.parametrize("text,verb,obj", [
    ("close the window", "close", "window"),
    ("pull out the drawer by its handle", "pull out", "drawer handle"),
    ("push the sliding window closed", "push closed", "sliding window"),
    ("Open the DRAWER!", "open", "drawer"),
])
def test_split_goal(text, verb, obj):
    assert split_goal(text) == (verb, obj)


def test_split_goal_falls_back_to_the_whole_text():
    assert split_goal("do something") == ("do something", "do something")
    assert split_goal("the drawer") == ("the drawer", "drawer")


def test_verb_object_embedding_is_the_two_parts(minilm):
    v = embed_goals(minilm, ["close the window", "open the drawer"], "verb_object")
    assert v.shape == (2, 2 * minilm.dim) == (2, goal_dim(minilm.dim, "verb_object"))
    np.testing.assert_allclose(v[0, :minilm.dim], minilm.encode("close"), atol=1e-6)
    np.testing.assert_allclose(v[0, minilm.dim:], minilm.encode("window"), atol=1e-6)
    np.testing.assert_allclose(embed_goals(minilm, "close the window", "sentence"),
                               minilm.encode("close the window"), atol=1e-6)
    # the verb part of "close the window" is the verb part of "close the drawer"
    d = embed_goals(minilm, "close the drawer", "verb_object")
    np.testing.assert_allclose(v[0, :minilm.dim], d[:minilm.dim], atol=1e-6)


def test_verb_object_routing_sends_object_to_the_first_layer_and_verb_to_the_later():
    cfg = _cfg(**{"net.goal_encoding": "verb_object", "net.text_routing": True,
                  "net.routing_input": "cond", "net.num_layers": 3})
    agent = _agent(cfg)
    L, half = cfg.net.latent_dim, agent.goal_dim // 2
    assert agent.cond_dim == L + 2 * TEXT_DIM
    g = torch.Generator().manual_seed(4)
    obs = torch.randn(2, OBS_DIM, generator=g)
    z = torch.randn(2, L, generator=g)
    goal = torch.randn(2, agent.goal_dim, generator=g)
    base = agent.actor(obs, agent.context_condition(z, goal), deterministic=True).routing
    new_verb = goal.clone()
    new_verb[:, :half] = torch.randn(2, half, generator=g)
    r_verb = agent.actor(obs, agent.context_condition(z, new_verb), deterministic=True).routing
    new_obj = goal.clone()
    new_obj[:, half:] = torch.randn(2, half, generator=g)
    r_obj = agent.actor(obs, agent.context_condition(z, new_obj), deterministic=True).routing
    torch.testing.assert_close(r_verb.layers[0], base.layers[0])          # verb: not layer 1
    assert (r_verb.layers[1] - base.layers[1]).abs().max() > 1e-5         # verb: later layers
    assert (r_obj.layers[0] - base.layers[0]).abs().max() > 1e-5          # object: layer 1
    # (later layers still see the object through the first routing: Soft-Module's cascade)


def test_text_routing_condition_reaches_the_belief():
    cfg = _cfg(**{"net.text_routing": True})
    agent = _agent(cfg)
    goal = _goal(agent, 2).numpy()
    belief = TaskBelief(agent, 2, goal=goal)
    cond = belief.condition()
    assert cond.shape == (2, cfg.net.latent_dim + TEXT_DIM)
    torch.testing.assert_close(cond[:, cfg.net.latent_dim:], torch.as_tensor(goal))
    assert belief.act(np.zeros((2, OBS_DIM), np.float32)).action.shape == (2, ACT_DIM)


# -- context dropout -------------------------------------------------------------------------------
def test_context_mask_drops_whole_contexts_at_the_asked_rate():
    trainer = types.SimpleNamespace(config=_cfg(**{"sac.context_dropout": 0.3}),
                                    rng=np.random.default_rng(0), device=torch.device("cpu"))
    context = torch.zeros(3, 16, TRANSITION_DIM)
    masks = torch.stack([Trainer._context_mask(trainer, context) for _ in range(2000)])
    counts = masks.sum(-1).flatten().numpy()
    assert abs((counts == 0).mean() - 0.3) < 0.04
    kept = counts[counts > 0]
    assert kept.min() == 1 and kept.max() == 16 and abs(kept.mean() - 8.5) < 0.5
    off = types.SimpleNamespace(config=_cfg(), rng=np.random.default_rng(0), device="cpu")
    assert Trainer._context_mask(off, context) is None


def test_empty_context_leaves_the_goal_factor_and_the_update_runs():
    agent = _agent(_cfg(**{"sac.context_dropout": 0.5}))
    goal = _goal(agent)
    context = torch.randn(3, 16, TRANSITION_DIM)
    mask = torch.tensor([[False] * 16, [True] * 4 + [False] * 12, [True] * 16])
    mu, var = agent.infer_posterior(context, goal, mask)
    g_mu, g_var = agent.encoder.goal_factor(goal)
    torch.testing.assert_close(mu[0], g_mu[0])
    torch.testing.assert_close(var[0], g_var[0])
    assert (var[1] < g_var[1]).all() and (var[2] < var[1]).all()
    m = SACLearner(agent).update(_batch(3, 8), context, goal, torch.arange(3), context_mask=mask)
    assert math.isfinite(m["critic_loss"])


# -- KL against the text prior; contrastive term ---------------------------------------------------
def test_kl_gaussians_matches_torch():
    g = torch.Generator().manual_seed(5)
    mu, mu_p = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    var, var_p = torch.rand(4, 3, generator=g) + 0.1, torch.rand(4, 3, generator=g) + 0.1
    expected = kl_divergence(Normal(mu, var.sqrt()), Normal(mu_p, var_p.sqrt())).sum(-1)
    torch.testing.assert_close(kl_gaussians(mu, var, mu_p, var_p), expected)


def test_text_prior_kl_is_measured_against_the_goal_factor():
    agent = _agent(_cfg(**{"sac.kl_prior": "text"}))
    learner = SACLearner(agent)
    goal = _goal(agent)
    mu, var = agent.infer_posterior(torch.randn(3, 16, TRANSITION_DIM), goal)
    g_mu, g_var = agent.encoder.goal_factor(goal)
    expected = kl_gaussians(mu, var, g_mu, g_var) + kl_to_standard_normal(g_mu, g_var)
    torch.testing.assert_close(learner._kl(mu, var, goal), expected)
    standard = SACLearner(_agent(_cfg()))
    torch.testing.assert_close(standard._kl(mu, var, goal), kl_to_standard_normal(mu, var))


def test_text_prior_needs_a_goal_factor():
    with pytest.raises(ConfigError, match="goal_factor"):
        _cfg(**{"sac.kl_prior": "text", "net.goal_factor": False})


def test_task_contrastive_loss_prefers_matched_pairs():
    g = torch.Generator().manual_seed(6)
    mu = torch.randn(4, 5, generator=g) * 3
    matched = task_contrastive_loss(mu, mu + 0.01 * torch.randn(4, 5, generator=g))
    shuffled = task_contrastive_loss(mu, mu[[1, 2, 3, 0]])
    assert matched < 0.1 < shuffled


def test_contrastive_term_trains_the_encoder_only_through_the_critic_step():
    agent = _agent(_cfg(**{"sac.z_contrastive": 1.0}))
    context, goal = torch.randn(3, 16, TRANSITION_DIM), _goal(agent)
    before = [p.detach().clone() for p in agent.encoder.parameters()]
    m = SACLearner(agent).update(_batch(3, 8), context, goal, torch.arange(3))
    assert "z_contrastive" in m and math.isfinite(m["z_contrastive"])
    assert any((p - b).abs().max() > 0 for p, b in zip(agent.encoder.parameters(), before))


# -- the offline behaviour term -------------------------------------------------------------------
@pytest.mark.parametrize("form", ["sum", "td3bc"])
def test_bc_form_weights(form):
    agent = _agent(_cfg(**{"sac.bc_form": form, "sac.bc_weight": 2.5}))
    learner = SACLearner(agent)
    T, B = 3, 8
    batch = _batch(T, B)
    flat = {k: v.reshape(T * B, *v.shape[2:]) for k, v in batch.items()}
    cond = torch.randn(T * B, agent.cond_dim)
    alpha_rows = torch.full((T * B,), 0.5)
    log_alpha = agent.log_alpha.detach().clone().requires_grad_(True)
    torch.manual_seed(7)
    metrics = learner._actor_step(flat, cond, alpha_rows, log_alpha, T, B)
    # recompute with the weights the step started from
    agent2 = _agent(_cfg(**{"sac.bc_form": form, "sac.bc_weight": 2.5}))
    torch.manual_seed(7)
    pi = agent2.actor(flat["obs"], cond)
    q = agent2.critic(flat["obs"], pi.action, cond).min(0).values
    rl = alpha_rows * pi.log_prob - q
    scale = 1.0 / q.abs().mean().clamp(min=1.0)
    sq = (pi.mean_action - flat["actions"]).pow(2)
    if form == "td3bc":
        per_row = 2.5 * scale * rl + sq.mean(-1)
    else:
        per_row = scale * rl + 2.5 * sq.sum(-1)
    expected = per_row.view(T, B).mean(-1).sum() / T
    assert metrics["actor_loss"] == pytest.approx(expected.item(), rel=1e-5)


# -- named variants and the CLI -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_builds_updates_and_is_recognised(name):
    cfg = tiny_config("cmrl").updated(variant_fields(name))
    assert variant_of(cfg) == name
    agent = _agent(cfg)
    m = SACLearner(agent).update(_batch(3, 8), torch.randn(3, 16, TRANSITION_DIM), _goal(agent),
                                 torch.arange(3))
    assert all(math.isfinite(v) for v in m.values())


def test_variant_and_set_flags():
    from cmrl.cli import build_parser, config_from_args

    args = build_parser().parse_args([
        "train", "--run-dir", "unused", "--agent", "cmrl", "--variant", "task-routing",
        "--set", "sac.context_dropout=0.25", "--set", "net.cond_embed=mlp", "--batch-size", "64"])
    cfg = config_from_args(args)
    assert cfg.net.routing_input == "cond" and cfg.net.obs_takes_context is False
    assert cfg.sac.context_dropout == 0.25 and cfg.net.cond_embed == "mlp"
    assert cfg.sac.batch_size == 64


@pytest.mark.parametrize("bad", ["sac.context_dropout=1.5", "net.routing_input=sideways",
                                 "net.nonexistent=1", "nosection", "sac.bc_form=3"])
def test_bad_set_is_one_clear_error(tmp_path, capsys, bad):
    from cmrl.cli import main

    code = main(["train", "--agent", "cmrl", "--set", bad, "--steps", "0",
                 "--run-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


# -- the encoder's own targets: reward decoder, decoupled from the critic, frozen after N steps --
def test_reward_decoder_predicts_rewards_from_z_and_is_checkpointed(tmp_path):
    from cmrl.runs import checkpoint as ckpt

    agent = _agent(_cfg("pearl", **{"sac.reward_decoder": 1.0}))
    assert agent.encoder.reward_net is not None
    assert _agent(_cfg("pearl")).encoder.reward_net is None  # off by default: old checkpoints load
    context = torch.randn(3, 16, TRANSITION_DIM)
    m = SACLearner(agent).update(_batch(3, 8), context, None, torch.arange(3))
    assert math.isfinite(m["reward_decoder_mse"])
    names = [k for k in agent.state_dict() if "reward_net" in k]
    assert names and all(k.startswith("encoder.") for k in names)


def test_reward_decoder_fits_its_own_rows_when_the_batch_has_them():
    agent = _agent(_cfg("pearl", **{"sac.reward_decoder": 1.0}))
    context = torch.randn(3, 16, TRANSITION_DIM)
    batch = _batch(3, 8)
    torch.manual_seed(0)
    plain = SACLearner(agent).update(batch, context, None, torch.arange(3))["reward_decoder_mse"]
    far = {f"decoder_{k}": batch[k].clone() for k in ("obs", "actions", "next_obs", "rewards")}
    far["decoder_rewards"] += 100.0  # rows the decoder cannot already fit
    torch.manual_seed(0)
    m = SACLearner(agent).update({**batch, **far}, context, None, torch.arange(3))
    assert m["reward_decoder_mse"] > 100 * max(plain, 1.0)


def test_goal_supervision_teaches_the_posterior_mean_where_the_goal_is():
    agent = _agent(_cfg("pearl", **{"sac.goal_supervision": 1.0, "sac.kl_weight": 0.0,
                                    "sac.lr": 3e-3}))
    enc = agent.encoder
    assert enc.goal_head is not None and enc.goal_head.out_features == 3  # Meta-World: x, y, z
    assert _agent(_cfg("pearl")).encoder.goal_head is None  # off by default: old checkpoints load
    names = [k for k in agent.state_dict() if "goal_" in k]
    assert {"encoder.goal_mean", "encoder.goal_std"} <= set(names)
    g = torch.Generator().manual_seed(0)
    context = torch.randn(3, 16, TRANSITION_DIM, generator=g)
    goal_pos = context[:, :, :3].mean(1) * 4 + 1  # a goal the context determines
    enc.set_goal_stats(goal_pos)
    batch = _batch(3, 8)
    batch["goal_pos"] = goal_pos[:, None].expand(3, 8, 3).clone()
    learner = SACLearner(agent)
    errors = [float(learner.update(batch, context, None, torch.arange(3))["goal_error"])
              for _ in range(150)]
    assert errors[-1] < 0.2 * errors[0], errors[::30]
    with torch.no_grad():
        mu, _ = agent.infer_posterior(context, None)
        placed = enc.predict_goal(mu)
    assert (placed - goal_pos).norm(dim=-1).max() < 0.5 * (goal_pos - goal_pos.mean(0)).norm(dim=-1).max()
    # goals not recorded (NaN) add nothing
    batch["goal_pos"][:] = float("nan")
    assert float(learner.update(batch, context, None, torch.arange(3))["goal_error"]) == 0.0


def _encoder_step(**fields) -> float:
    """How far one update moves the encoder's transition net (KL off, no clipping)."""
    agent = _agent(_cfg("pearl", **{"sac.kl_weight": 0.0, "sac.grad_clip": 0.0, **fields}))
    before = [p.detach().clone() for p in agent.encoder.transition_net.parameters()]
    SACLearner(agent).update(_batch(3, 8), torch.randn(3, 16, TRANSITION_DIM), None, torch.arange(3))
    return max(float((p - b).abs().max()) for p, b in
               zip(agent.encoder.transition_net.parameters(), before))


def _decoded(agent: MetaAgent, context: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The reward decoder's rewards [E, N] for the context's rows at z [E, L]."""
    d, a = OBS_DIM, ACT_DIM
    with torch.no_grad():
        return agent.encoder.predict_reward(context[..., :d], context[..., d:d + a],
                                            context[..., -d:],
                                            z[:, None].expand(-1, context.shape[1], -1))


def _decoder_error(agent: MetaAgent, context: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per env, the decoder's summed squared error on the context's own rewards at z."""
    return (_decoded(agent, context, z) - context[..., OBS_DIM + ACT_DIM]).pow(2).sum(-1)


def test_the_decoder_with_its_rows_fixed_decodes_every_row_and_z_as_the_decoder_does():
    enc = _agent(_cfg("pearl", **{"sac.reward_decoder": 1.0})).encoder
    enc.obs_norm.set(torch.randn(OBS_DIM), torch.rand(OBS_DIM) + 0.5)  # a normaliser that acts
    E, N, K, L = 2, 7, 3, enc.latent_dim
    context = torch.randn(E, N, TRANSITION_DIM)
    d, a = OBS_DIM, ACT_DIM
    z = torch.randn(E, K, L, requires_grad=True)
    fixed = enc.reward_given_rows(context[..., :d], context[..., d:d + a], context[..., -d:])(z)
    pairs = enc.predict_reward(*(x[:, None].expand(E, K, N, -1) for x in
                                 (context[..., :d], context[..., d:d + a], context[..., -d:])),
                               z[:, :, None].expand(E, K, N, L))
    assert fixed.shape == (E, K, N)
    torch.testing.assert_close(fixed, pairs)
    grads = [torch.autograd.grad(out.pow(2).sum(), z)[0] for out in (fixed, pairs)]
    torch.testing.assert_close(grads[0], grads[1])


def test_refined_mean_fits_the_decoder_and_leaves_the_weights_alone():
    agent = _agent(_cfg("pearl", **{"sac.reward_decoder": 1.0}))
    context = torch.randn(3, 12, TRANSITION_DIM)
    # Rewards the decoder itself gives at some z*: a context whose best z is known to exist.
    z_star = 2 * torch.randn(3, agent.config.net.latent_dim)
    context[..., OBS_DIM + ACT_DIM] = _decoded(agent, context, z_star)
    mask = torch.ones(3, 12)
    mask[2] = 0  # an env that has seen nothing keeps its mean
    with torch.no_grad():
        mu, _ = agent.infer_posterior(context, None)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    refined = agent.encoder.refine_mean(mu, context, mask, steps=200, lr=0.05, prior=0.0)
    err_mu, err_ref = _decoder_error(agent, context, mu), _decoder_error(agent, context, refined)
    assert (err_ref[:2] < 0.1 * err_mu[:2]).all(), (err_mu, err_ref)
    assert torch.equal(refined[2], mu[2])
    assert torch.equal(agent.encoder.refine_mean(mu, context, mask, 0, 0.05, 0.0), mu)
    assert all(torch.equal(v, before[k]) for k, v in agent.state_dict().items())
    assert all(p.grad is None for p in agent.parameters())
    with pytest.raises(RuntimeError, match="reward decoder"):
        _agent(_cfg("pearl")).encoder.refine_mean(mu, context, mask, 5, 0.05, 0.0)


def test_belief_refines_its_mean_from_what_it_observed_and_clear_z_forgets_it():
    plain = _agent(_cfg("pearl", **{"sac.reward_decoder": 1.0}))
    refining = _agent(_cfg("pearl", **{"sac.reward_decoder": 1.0, "sac.z_refine_steps": 30}))
    E, g = 2, torch.Generator().manual_seed(3)
    beliefs = [TaskBelief(plain, E), TaskBelief(refining, E)]
    rows = []
    for _ in range(6):
        row = torch.randn(E, TRANSITION_DIM, generator=g).numpy()
        rows.append(row)
        o, a = row[:, :OBS_DIM], row[:, OBS_DIM:OBS_DIM + ACT_DIM]
        for b in beliefs:
            b.observe(o, a, row[:, OBS_DIM + ACT_DIM], row[:, -OBS_DIM:])
    (mu0, var0), (mu1, var1) = (b.infer_posterior() for b in beliefs)
    torch.testing.assert_close(var0, var1)  # the variance stays the product's
    context = torch.as_tensor(np.stack(rows, 1))
    expected = refining.encoder.refine_mean(mu0, context, None, 30, 0.05, 0.01)
    torch.testing.assert_close(mu1, expected)
    assert (_decoder_error(refining, context, mu1) < _decoder_error(refining, context, mu0)).all()
    beliefs[1].clear_z(np.array([True, False]))
    mu2, _ = beliefs[1].infer_posterior()
    assert torch.equal(mu2[0], torch.zeros_like(mu2[0]))  # back to the prior
    torch.testing.assert_close(mu2[1], mu1[1])  # env 1 still refines on its own rows
    with pytest.raises(ConfigError, match="z_refine_steps"):
        _cfg("pearl", **{"sac.z_refine_steps": 10})  # nothing to fit z to


def test_refinement_from_several_starts_keeps_the_best_fit():
    agent = _agent(_cfg("pearl", **{"sac.reward_decoder": 1.0}))
    context = torch.randn(2, 12, TRANSITION_DIM)
    z_star = 3 * torch.randn(2, agent.config.net.latent_dim)
    context[..., OBS_DIM + ACT_DIM] = _decoded(agent, context, z_star)
    mu = -z_star  # a poor start that 3 small steps cannot bring to z*
    # A start near z*, not on it: at an exact optimum Adam's normalised step follows rounding noise.
    near, wrong = z_star + 0.3, z_star + 5.0
    starts = torch.stack([wrong, near], 1)  # [E, 2, L]: env 0 and 1 both hold it second
    starts[1] = torch.stack([near[1], wrong[1]])  # env 1 holds it first
    one = agent.encoder.refine_mean(mu, context, None, 3, 0.05, 0.0)
    best = agent.encoder.refine_mean(mu, context, None, 3, 0.05, 0.0, starts=starts)
    assert (_decoder_error(agent, context, best) < _decoder_error(agent, context, one)).all()
    # each env keeps the fit it would get from that start alone
    torch.testing.assert_close(best, agent.encoder.refine_mean(near, context, None, 3, 0.05, 0.0))
    # without extra starts nothing changes: the single-start fit
    torch.testing.assert_close(agent.encoder.refine_mean(mu, context, None, 3, 0.05, 0.0,
                                                         starts=None), one)


def test_belief_takes_extra_starts_from_its_own_rows_factor_means():
    agent = _agent(_cfg("pearl", **{"sac.reward_decoder": 1.0, "sac.z_refine_steps": 5,
                                    "sac.z_refine_starts": 3}))
    belief, g = TaskBelief(agent, 2), torch.Generator().manual_seed(7)
    rows = torch.randn(2, 5, TRANSITION_DIM, generator=g).numpy()
    for t in range(5):  # env 1 sees only the first three rows
        r = rows[:, t]
        belief.observe(r[:, :OBS_DIM], r[:, OBS_DIM:OBS_DIM + ACT_DIM], r[:, OBS_DIM + ACT_DIM],
                       r[:, -OBS_DIM:], env_mask=np.array([True, t < 3]))
    with torch.no_grad():
        factor_mu, _ = agent.encoder.transition_factors(torch.as_tensor(rows))
    starts = belief._extra_starts(torch.stack(belief._row_mask, 1), 2)
    torch.testing.assert_close(starts[0], factor_mu[0, [0, 4]])  # first and last of five
    torch.testing.assert_close(starts[1], factor_mu[1, [0, 2]])  # of its own three
    mu, _ = belief.infer_posterior()
    assert torch.isfinite(mu).all()
    with pytest.raises(ConfigError, match="z_refine_starts"):
        _cfg("pearl", **{"sac.reward_decoder": 1.0, "sac.z_refine_starts": 0})


def test_a_shown_refined_mean_may_lag_but_the_acted_on_one_never_does():
    agent = _agent(_cfg("pearl", **{"sac.reward_decoder": 1.0, "sac.z_refine_steps": 20}))
    belief, g = TaskBelief(agent, 1, refine_every=3), torch.Generator().manual_seed(5)

    def observe():
        row = torch.randn(1, TRANSITION_DIM, generator=g).numpy()
        belief.observe(row[:, :OBS_DIM], row[:, OBS_DIM:OBS_DIM + ACT_DIM],
                       row[:, OBS_DIM + ACT_DIM], row[:, -OBS_DIM:])

    observe()
    first, _ = belief.infer_posterior(exact=False)
    observe(), observe()
    torch.testing.assert_close(belief.infer_posterior(exact=False)[0], first)  # 2 new < 3: shown as was
    fresh, _ = belief.infer_posterior()
    assert not torch.allclose(fresh, first)  # acting refits on all three rows
    observe(), observe(), observe()
    shown, _ = belief.infer_posterior(exact=False)
    torch.testing.assert_close(shown, belief.infer_posterior()[0])  # 3 new: refitted


def test_detached_encoder_learns_from_the_decoder_not_the_critic():
    assert _encoder_step() > 1e-5  # PEARL: the Bellman error trains it
    # detached, with a vanishing decoder weight, nothing reaches it
    assert _encoder_step(**{"sac.encoder_from_critic": False, "sac.reward_decoder": 1e-15}) < 1e-7
    assert _encoder_step(**{"sac.encoder_from_critic": False, "sac.reward_decoder": 1.0}) > 1e-5


def test_encoder_is_frozen_after_encoder_steps():
    agent = _agent(_cfg("pearl", **{"sac.encoder_steps": 2}))
    learner = SACLearner(agent)
    context = torch.randn(3, 16, TRANSITION_DIM)
    snaps = []
    for i in range(4):
        snaps.append([p.detach().clone() for p in agent.encoder.parameters()])
        actor_before = [p.detach().clone() for p in agent.actor.parameters()]
        learner.update(_batch(3, 8, seed=i), context, None, torch.arange(3))
        assert any((p - b).abs().max() > 0 for p, b in zip(agent.actor.parameters(), actor_before))
    changed = lambda a, b: any((x - y).abs().max() > 0 for x, y in zip(a, b))  # noqa: E731
    assert changed(snaps[0], snaps[1]) and changed(snaps[1], snaps[2])
    assert not changed(snaps[2], snaps[3]) and learner.encoder_frozen
    assert not changed(snaps[3], [p.detach() for p in agent.encoder.parameters()])


def test_refinement_pool_averages_the_fits_that_fit_about_as_well():
    agent = _agent(_cfg("pearl", **{"sac.reward_decoder": 1.0}))
    context = torch.randn(1, 12, TRANSITION_DIM)
    z_star = 3 * torch.randn(1, agent.config.net.latent_dim)
    context[..., OBS_DIM + ACT_DIM] = _decoded(agent, context, z_star) + 0.1 * torch.randn(1, 12)
    starts = torch.stack([z_star + 0.05, z_star + 5.0], 1)  # near and far
    fits = [agent.encoder.refine_mean(z, context, None, 2, 0.05, 0.0)
            for z in (z_star, starts[:, 0], starts[:, 1])]
    err = [float(_decoder_error(agent, context, f)) for f in fits]
    assert err[2] > max(err[:2])  # the far start still fits worst

    def pooled(pool):
        return agent.encoder.refine_mean(z_star, context, None, 2, 0.05, 0.0, starts=starts,
                                         pool=pool)

    best = min(range(3), key=err.__getitem__)
    torch.testing.assert_close(pooled(0.0), fits[best])  # no pool: the lowest loss alone
    torch.testing.assert_close(pooled(float("inf")), sum(fits) / 3)  # every fit
    # a pool wide enough for the two close fits and not the far one averages those two
    lo, hi = max(err[:2]) / min(err[:2]) - 1, err[2] / min(err[:2]) - 1
    torch.testing.assert_close(pooled((lo + hi) / 2), (fits[0] + fits[1]) / 2)
    with pytest.raises(ConfigError, match="z_refine_pool"):
        _cfg("pearl", **{"sac.z_refine_pool": -1.0})
