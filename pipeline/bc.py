"""Behaviour cloning: CSIL's two-stage HetStat pre-training and a plain MLP baseline.

Losses (method.md section 1):
  faithful  MSE(tanh(loc), a) trains torso, features and mean head; the NLL sees loc and
            features through stop-gradients, so it trains only the variance head.
  nll       plain negative log-likelihood through everything.
  mse       MSE of the deterministic action only (the variance head stays at its prior).
Early stopping keeps the snapshot with the lowest held-out MSE on expert *episodes*
that were never trained on.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from pipeline.datasets import EpisodeDataset
from pipeline.distributions import tanh_gaussian_log_prob
from pipeline.policies import HetStatPolicy, Policy

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def split_expert_episodes(expert: EpisodeDataset, val_fraction: float, seed: int
                          ) -> tuple[EpisodeDataset, EpisodeDataset]:
    """Hold out whole expert episodes (at least one) for early stopping.

    With a single episode there is nothing to hold out by episode, so its last
    ``val_fraction`` of transitions is held out instead (a contiguous chunk, never
    interleaved with training transitions).
    """
    n = expert.n_episodes
    if n >= 2:
        n_val = min(n - 1, max(1, int(round(val_fraction * n))))
        order = np.random.default_rng(seed).permutation(n)
        return expert.select_episodes(np.sort(order[n_val:])), expert.select_episodes(np.sort(order[:n_val]))
    length = expert.n_transitions
    cut = max(1, int(round(length * (1 - val_fraction))))
    head, tail = np.arange(cut), np.arange(cut, length)
    if len(tail) == 0:
        return expert, expert
    def part(rows: np.ndarray) -> EpisodeDataset:
        arrays = {k: getattr(expert, k)[rows] for k in
                  ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
        return EpisodeDataset(**arrays, episode_starts=np.array([0, len(rows)]), meta=dict(expert.meta))
    return part(head), part(tail)


def observation_stats(*datasets: EpisodeDataset) -> tuple[torch.Tensor, torch.Tensor]:
    obs = np.concatenate([d.observations for d in datasets]).astype(np.float64)
    return torch.as_tensor(obs.mean(0), dtype=torch.float32), torch.as_tensor(obs.std(0), dtype=torch.float32)


def baseline_seeds(seed: int, n: int) -> list[int]:
    """Seeds of the ``n`` plain BC baselines: seed, seed+1, ...; the first is the `bc` row, the others `bc-<seed>`."""
    return [seed + k for k in range(n)]


def bc_loss(policy: Policy, obs: torch.Tensor, act: torch.Tensor, kind: str,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """The BC loss ``kind``; ``weights`` (one per sample) make it advantage-weighted (AWR)."""
    def mean(per_sample: torch.Tensor) -> torch.Tensor:
        return per_sample.mean() if weights is None else (weights * per_sample).mean()
    if kind == "nll":
        return -mean(policy.log_prob(obs, act))
    if isinstance(policy, HetStatPolicy):
        f = policy.stationary_features(obs)
        loc = policy.loc(f)
    else:
        loc, std = policy.dist_params(obs)
    mse = mean((torch.tanh(loc) - act).pow(2).mean(-1))
    if kind == "mse":
        return mse
    if isinstance(policy, HetStatPolicy):
        std = policy.std(f.detach())
    return mse - mean(tanh_gaussian_log_prob(loc.detach(), std, act))


@torch.no_grad()
def evaluate_bc(policy: Policy, obs: torch.Tensor, act: torch.Tensor) -> dict[str, float]:
    """Held-out MSE of the deterministic action, NLL of the data, and policy entropy (MC)."""
    policy.eval()
    loc, std = policy.dist_params(obs)
    mse = (torch.tanh(loc) - act).pow(2).mean()
    nll = -tanh_gaussian_log_prob(loc, std, act).mean()
    sample = torch.tanh(loc + std * torch.randn_like(loc))
    entropy = -tanh_gaussian_log_prob(loc, std, sample).mean()
    policy.train()
    return {"val_mse": float(mse), "val_nll": float(nll), "entropy": float(entropy)}


@dataclass
class FitResult:
    best_step: int
    steps_run: int
    wall_s: float
    best: dict
    curve: list[dict] = field(default_factory=list)


def fit(policy: Policy, sample_batch: Callable[[], Batch], val: Batch, *, steps: int, lr: float,
        weight_decay: float, loss: str, eval_every: int, patience: int, desc: str,
        step_offset: int = 0, keep: str = "best") -> FitResult:
    """Adam with L2 weight decay; evaluate every ``eval_every`` steps.

    keep="best": stop after ``patience`` evaluations without a lower held-out MSE and end
    holding the best trained snapshot (the untrained start is never chosen). keep="last": run
    all ``steps`` and keep the last iterate (the held-out MSE is only logged).
    """
    opt = torch.optim.Adam(policy.parameters(), lr=lr, weight_decay=weight_decay)
    # The starting point is logged but never kept: with one demonstration the held-out MSE of an
    # untrained MLP (actions ~0) can beat every trained snapshot, and an untrained "BC" is no baseline.
    curve = [{"step": step_offset, **evaluate_bc(policy, *val), "train_loss": float("nan")}]
    best, best_state, best_step, since_best = {"val_mse": float("inf")}, None, 0, 0
    start, step = time.time(), 0
    bar = tqdm(range(1, steps + 1), desc=desc, mininterval=2.0, leave=False)
    running = torch.zeros((), device=val[0].device)
    for step in bar:
        obs, act = sample_batch()
        l = bc_loss(policy, obs, act, loss)
        opt.zero_grad(set_to_none=True)
        l.backward()
        opt.step()
        running += l.detach()
        if step % eval_every == 0 or step == steps:
            metrics = evaluate_bc(policy, *val)
            curve.append({"step": step_offset + step, **metrics, "train_loss": float(running) / eval_every})
            running.zero_()
            bar.set_postfix(val_mse=f"{metrics['val_mse']:.4f}", val_nll=f"{metrics['val_nll']:.2f}")
            if keep == "last":
                best, best_step = metrics, step
            elif metrics["val_mse"] < best["val_mse"]:
                best, best_state, best_step, since_best = metrics, copy.deepcopy(policy.state_dict()), step, 0
            else:
                since_best += 1
                if since_best >= patience:
                    break
    bar.close()
    if best_state is not None:
        policy.load_state_dict(best_state)
    elif keep != "last" or steps == 0:   # steps == 0: nothing was trained
        best = curve[0]
    wall = time.time() - start
    log.info("%s: best val_mse %.4f val_nll %.3f at step %d of %d (%.1fs)", desc, best["val_mse"],
             best["val_nll"], best_step, step, wall)
    return FitResult(best_step=best_step, steps_run=step, wall_s=wall, best=best, curve=curve)


def batch_sampler(obs: torch.Tensor, act: torch.Tensor, batch_size: int) -> Callable[[], Batch]:
    """Uniform minibatches of (obs, act) drawn on the tensors' device (global torch seed)."""
    n = obs.shape[0]
    def sample() -> Batch:
        idx = torch.randint(0, n, (batch_size,), device=obs.device)
        return obs[idx], act[idx]
    return sample


def mixed_sampler(a: Batch, b: Batch, batch_size: int) -> Callable[[], Batch]:
    """Half of each batch from ``a``, half from ``b`` (CSIL's 50/50 stage-1 mix)."""
    first = batch_sampler(*a, batch_size // 2)
    second = batch_sampler(*b, batch_size - batch_size // 2)
    def sample() -> Batch:
        (o1, a1), (o2, a2) = first(), second()
        return torch.cat([o1, o2]), torch.cat([a1, a2])
    return sample
