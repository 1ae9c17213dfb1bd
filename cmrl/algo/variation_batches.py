"""Training batches in which PEARL's task is a goal variation.

On ML1, ML10 or the point robot an env name covers many goals. A context drawn across all of them
cannot say where the goal is, and a z inferred from one goal's context must condition RL rows of
that same goal, or the actor and critics learn to ignore z. So each update draws, per meta-train
task, `groups_per_task` goal variations; for each one a context and `batch_size // groups_per_task`
RL rows from that variation alone. The rows are laid out as T x groups_per_task "tasks" for the
batched SAC update, each knowing its meta-train task (for per-task temperatures and goal texts).

`relabel_fraction` of each context may come from other variations of the same task with their
rewards recomputed for this variation's goal (`envs/relabel.py`), so the encoder sees many
behaviours per goal and must read the goal from rewards. `rl_relabel_fraction` does the same for
the RL rows (hindsight relabelling): the critic then sees every transition of the task under every
goal drawn, not only the few episodes recorded for that goal. `decoder_relabel_fraction` does it
for the reward decoder's rows alone (fields `decoder_*` of the batch), leaving the RL rows intact.

`goal_jitter` > 0 moves each drawn variation's goal by Gaussian noise of that std (per axis) before
anything is relabelled for it: the recorded goals are a few dozen points (ML1: 50, about 3 cm
apart), and a context, decoder or belief target relabelled only for those teaches z nothing about
the goals between them, where meta-test goals lie. The RL rows keep their recorded rewards.

`goal_dim` > 0 adds each group's goal position (the recorded one, moved by `goal_jitter`) to the
batch (`goal_pos`, one per RL row), the target of `sac.goal_supervision`.

`unrelabelled_from_task` draws the contexts of tasks without a relabeller from any of their
variations instead of their own: with a variation or two per recorded episode, a variation's own
context would name the episode its RL rows come from.

`context_window` > 0 draws each part of a context as runs of that many consecutive transitions
instead of single transitions picked at random. At meta-test the encoder reads the agent's own
episodes, a few trajectories in a row; a posterior learned only from transitions scattered over
the whole dataset does not transfer to them (measured on the point robot: docs/adaptation.md).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..envs.relabel import Recorded, Relabeller
from .replay import MultiTaskReplay


class VariationBatches:
    def __init__(self, num_tasks: int, groups_per_task: int, batch_size: int, context_size: int,
                 relabel_fraction: float = 0.0,
                 relabellers: Sequence[Relabeller | None] | None = None,
                 rl_relabel_fraction: float = 0.0, context_window: int = 0,
                 decoder_relabel_fraction: float = 0.0, goal_dim: int = 0,
                 goal_jitter: float = 0.0, unrelabelled_from_task: bool = False):
        self.T, self.M = num_tasks, groups_per_task
        self.rows = max(1, batch_size // groups_per_task)
        self.N = context_size
        self.relabel_fraction = relabel_fraction
        self.relabellers = list(relabellers or [None] * num_tasks)
        self.rl_relabel_fraction = rl_relabel_fraction
        self.window = context_window
        self.decoder_relabel_fraction = decoder_relabel_fraction
        self.goal_dim = goal_dim
        self.goal_jitter = goal_jitter
        self.unrelabelled_from_task = unrelabelled_from_task
        # task -> (buffer, its version, what it recorded per row): see `_recorded`
        self._recorded_cache: dict[int, tuple[MultiTaskReplay, int, Recorded]] = {}

    @property
    def row_task(self) -> np.ndarray:
        """The meta-train task of each of the T * M batch rows."""
        return np.repeat(np.arange(self.T), self.M)

    def pick_groups(self, driver: MultiTaskReplay, rng: np.random.Generator) -> list[int]:
        """M variations per task (with replacement), among those in `driver`."""
        out = []
        for t in range(self.T):
            keys = list(driver.group_index(t))
            if not keys:
                raise RuntimeError(f"replay of task {t} is empty")
            out.extend(keys[i] for i in rng.integers(len(keys), size=self.M))
        return out

    @staticmethod
    def _rows_of(source: MultiTaskReplay, task: int, group: int, n: int,
                 rng: np.random.Generator) -> np.ndarray | None:
        idx = source.group_index(task).get(group)
        return None if idx is None else idx[rng.integers(len(idx), size=n)]

    def _positions(self, size: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """n positions in range(size): single ones at random or, with a window, runs of
        consecutive ones, each starting at random."""
        if self.window <= 0 or n == 0:
            return rng.integers(size, size=n)
        w = min(self.window, size)
        starts = rng.integers(size - w + 1, size=-(-n // w))
        return (starts[:, None] + np.arange(w)).reshape(-1)[:n]

    def _gather(self, parts: list[tuple[MultiTaskReplay, np.ndarray]], fields: Sequence[str]
                ) -> dict[str, np.ndarray]:
        """Rows [T*M, n] from (source, index [n]) pairs per row, stacked per field."""
        row_task = self.row_task
        return {f: np.stack([getattr(src, f)[row_task[r], idx] for r, (src, idx) in enumerate(parts)])
                for f in fields}

    def sample(self, driver: MultiTaskReplay, rl_parts: Sequence[tuple[MultiTaskReplay, int]],
               rng: np.random.Generator, device: torch.device | str = "cpu"
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(batch {field: [T*M, rows, ...]}, context [T*M, N, 2*obs+act+1]).

        `driver` holds the variations to draw (offline: the dataset; online: the recent-context
        buffer) and gives the contexts; `rl_parts` are (source, rows per group) pairs whose rows
        are drawn from the same variation (from the driver where a source lacks it)."""
        groups = self.pick_groups(driver, rng)
        goals = self._goals(driver, groups, rng)
        row_task = self.row_task
        fields = ("obs", "actions", "rewards", "next_obs", "dones")
        batch_parts = []
        for source, n in rl_parts:
            if n <= 0:
                continue
            picks = []
            for r, g in enumerate(groups):
                idx = self._rows_of(source, row_task[r], g, n, rng)
                picks.append((source, idx) if idx is not None else
                             (driver, self._rows_of(driver, row_task[r], g, n, rng)))
            batch_parts.append(self._gather(picks, fields))
        batch = {f: np.concatenate([p[f] for p in batch_parts], axis=1) for f in fields}
        if self.rl_relabel_fraction > 0:
            self._relabel_rows(batch, driver, goals, rng, self.rl_relabel_fraction)
        if self.decoder_relabel_fraction > 0:
            rows = {f: batch[f].copy() for f in ("obs", "actions", "rewards", "next_obs")}
            self._relabel_rows(rows, driver, goals, rng, self.decoder_relabel_fraction)
            batch.update({f"decoder_{f}": v for f, v in rows.items()})
        if self.goal_dim:
            batch["goal_pos"] = self._goal_positions(goals, batch["rewards"].shape[1])
        context = self._context(driver, groups, rng, goals)
        out = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}
        return out, torch.from_numpy(context).to(device)

    def _goals(self, driver: MultiTaskReplay, groups: list[int],
               rng: np.random.Generator) -> list[np.ndarray | None]:
        """Each group's goal, as recorded (None where none was), moved by `goal_jitter`."""
        out = []
        for r, g in enumerate(groups):
            goal = driver.group_goals[int(self.row_task[r])].get(g)
            if goal is not None and self.goal_jitter > 0:
                goal = (np.asarray(goal, np.float64)
                        + rng.normal(0.0, self.goal_jitter, np.shape(goal))).astype(np.float32)
            out.append(goal)
        return out

    def _goal_positions(self, goals: list[np.ndarray | None], rows: int) -> np.ndarray:
        """[T*M, rows, goal_dim]: each group's goal on every one of its rows (NaN where none was
        recorded), for `sac.goal_supervision`."""
        out = np.full((len(goals), rows, self.goal_dim), np.nan, np.float32)
        for r, goal in enumerate(goals):
            if goal is not None and np.size(goal) == self.goal_dim:
                out[r] = goal
        return out

    def _relabel_rows(self, batch: dict[str, np.ndarray], driver: MultiTaskReplay,
                      goals: list[np.ndarray | None], rng: np.random.Generator,
                      fraction: float) -> None:
        """Replace the first `fraction` of each group's rows by transitions of any variation of
        the task, their rewards recomputed for the group's goal (in place; fields the batch has)."""
        n = int(round(batch["obs"].shape[1] * fraction))
        for r, goal in enumerate(goals):
            t = int(self.row_task[r])
            relabel = self.relabellers[t]
            if not n or relabel is None or goal is None:
                continue
            other = rng.integers(driver.size[t], size=n)
            for f in ("obs", "actions", "next_obs", "dones"):
                if f in batch:
                    batch[f][r, :n] = getattr(driver, f)[t, other]
            batch["rewards"][r, :n] = self._relabel(driver, t, other, goal)

    def _context(self, driver: MultiTaskReplay, groups: list[int], rng: np.random.Generator,
                 goals: list[np.ndarray | None] | None = None) -> np.ndarray:
        """Contexts [T*M, N, D], relabelled for `goals` (default: the groups' recorded ones)."""
        row_task = self.row_task
        if goals is None:
            goals = [driver.group_goals[int(row_task[r])].get(g) for r, g in enumerate(groups)]
        rows = []
        for r, (g, goal) in enumerate(zip(groups, goals)):
            t = int(row_task[r])
            relabel = self.relabellers[t]
            n_other = (int(round(self.N * self.relabel_fraction))
                       if relabel is not None and goal is not None else 0)
            if relabel is None and self.unrelabelled_from_task:
                own = self._positions(int(driver.size[t]), self.N, rng)
            else:
                pool = driver.group_index(t)[g]
                own = pool[self._positions(len(pool), self.N - n_other, rng)]
            obs, act = driver.obs[t, own], driver.actions[t, own]
            rew, nxt = driver.rewards[t, own], driver.next_obs[t, own]
            if n_other:
                other = self._positions(int(driver.size[t]), n_other, rng)
                o_obs, o_nxt = driver.obs[t, other], driver.next_obs[t, other]
                obs = np.concatenate([obs, o_obs])
                act = np.concatenate([act, driver.actions[t, other]])
                rew = np.concatenate([rew, self._relabel(driver, t, other, goal)])
                nxt = np.concatenate([nxt, o_nxt])
            ctx = np.concatenate([obs, act, rew[:, None].astype(np.float32), nxt], axis=-1)
            rows.append(ctx[rng.permutation(len(ctx))] if n_other else ctx)
        return np.stack(rows).astype(np.float32)

    def _relabel(self, driver: MultiTaskReplay, t: int, idx: np.ndarray,
                 goal: np.ndarray) -> np.ndarray:
        """Rewards of task t's rows `idx` under `goal`, with what was recorded about them where
        the task's relabeller needs it."""
        relabel = self.relabellers[t]
        obs, nxt = driver.obs[t, idx], driver.next_obs[t, idx]
        if not relabel.needs_recorded:
            return relabel(obs, nxt, goal)
        rec = self._recorded(driver, t)
        return relabel(obs, nxt, goal, Recorded(*(field[idx] for field in rec)))

    def _recorded(self, driver: MultiTaskReplay, t: int) -> Recorded:
        """What was recorded about every storage position of task t (rewards, own goal, the
        episode's first observation, the relabeller's goal-free terms), computed once per change
        of the buffer."""
        hit = self._recorded_cache.get(t)
        if hit is not None and hit[0] is driver and hit[1] == driver.version[t]:
            return hit[2]
        goals = driver.group_goals[t]
        order = driver.oldest_first(t)
        groups = driver.groups[t, order]
        missing = sorted({int(g) for g in np.unique(groups)} - set(goals))
        if missing:
            raise ValueError(f"relabelling task {t} needs every variation's recorded goal; "
                             f"variation(s) {missing[:3]} have none (regenerate the dataset)")
        firsts = driver.episode_firsts(t)
        goal_rows = np.empty((len(firsts), 3), np.float32)
        goal_rows[order] = np.stack([goals[int(g)][:3] for g in groups])
        rec = Recorded(driver.rewards[t, :len(firsts)], goal_rows, driver.obs[t, firsts])
        part = self.relabellers[t].goal_free_terms(driver.next_obs[t, order],
                                                   Recorded(*(f[order] for f in rec[:3])),
                                                   firsts[order] == order)
        terms = np.empty((len(firsts), part.shape[1]), np.float32)
        terms[order] = part
        rec = rec._replace(terms=terms)
        self._recorded_cache[t] = (driver, int(driver.version[t]), rec)
        return rec
