"""The meta-test refinement of z (`sac.z_refine_steps`) against its per-pair peer, in one run.

`ContextEncoder.refine_mean` computes the rows' share of the reward decoder's first layer once
(`reward_given_rows`); the peer decodes every (row, start) pair whole at every step, through
`predict_reward`, as training does. Both run the same Adam fit from the same starts on a shipped
checkpoint's encoder; the script prints the machine, the fastest of a few fits of each, their
ratio and how far apart the fitted means end.

    python scripts/bench_refine.py [--checkpoint checkpoints/ml1/reach-v3/cmrl] [--rows 64 500 1500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere

import torch

from cmrl import load_agent
from cmrl.experiments.bench import describe_machine


def per_pair_fit(enc, mu, context, starts, steps, lr, prior):
    """The peer: the same fit, every (row, start) pair decoded whole at every step."""
    d, a = enc.obs_dim, enc.act_dim
    obs, act = context[..., None, :, :d], context[..., None, :, d:d + a]
    rew, nxt = context[..., None, :, d + a], context[..., None, :, -d:]
    z = torch.cat([mu.unsqueeze(-2), starts], -2).clone().requires_grad_(True)
    shape = (*rew.shape[:-2], z.shape[-2], rew.shape[-1])
    opt = torch.optim.Adam([z], lr=lr)

    def losses(z):
        pred = enc.predict_reward(obs.expand(*shape, d), act.expand(*shape, a),
                                  nxt.expand(*shape, d), z.unsqueeze(-2).expand(*shape, -1))
        return (pred - rew).pow(2).sum(-1) + prior * 0.5 * z.pow(2).sum(-1)

    for _ in range(steps):
        (z.grad,) = torch.autograd.grad(losses(z).sum(), z)
        opt.step()
    with torch.no_grad():
        best = losses(z).argmin(-1)
    return z.detach()[torch.arange(z.shape[0]), best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/ml1/reach-v3/cmrl")
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 500, 1500],
                    help="context rows (3 reach adaptation episodes are 1,500)")
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed fits of each (the fastest counts)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine())
    enc = load_agent(args.checkpoint).agent.encoder
    data = torch.Generator().manual_seed(0)
    for n in args.rows:
        # Rows of plausible scale: observations and actions from N(0, 1), rewards in [0, 10].
        context = torch.randn(1, n, enc.transition_dim, generator=data)
        context[..., enc.obs_dim + enc.act_dim] = 10 * torch.rand(1, n, generator=data)
        mu = torch.zeros(1, enc.latent_dim)
        starts = torch.randn(1, args.starts - 1, enc.latent_dim, generator=data)
        fits = {"refine_mean": lambda steps: enc.refine_mean(mu, context, None, steps, 0.05, 0.01,
                                                             starts=starts),
                "peer": lambda steps: per_pair_fit(enc, mu, context, starts, steps, 0.05, 0.01)}
        for fit in fits.values():
            fit(5)  # warm-up
        best = {k: float("inf") for k in fits}
        for rep in range(args.repeats):  # alternate the order, keep each one's fastest
            for k in (list(fits) if rep % 2 == 0 else list(fits)[::-1]):
                t0 = time.perf_counter()
                z = fits[k](args.steps)
                best[k] = min(best[k], time.perf_counter() - t0)
                if k == "refine_mean":
                    ours = z
                else:
                    peer = z
        t_ours, t_peer = best["refine_mean"], best["peer"]
        print(f"rows {n:5d}, {args.starts} starts, {args.steps} steps: refine_mean {t_ours:6.2f} s, "
              f"per-pair peer {t_peer:6.2f} s, {t_peer / t_ours:.2f}x; "
              f"fitted means {float((ours - peer).abs().max()):.1e} apart")


if __name__ == "__main__":
    main()
