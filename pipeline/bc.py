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

from pipeline.datasets import EpisodeDataset
from pipeline.distributions import tanh_gaussian_log_prob
from pipeline.nets import adam
from pipeline.policies import HetStatPolicy, Policy
from pipeline.utils import progress, seed_everything
from pipeline.vectorised import SeedRNG, SeedStack

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def _held_out_episodes(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def expert_split_rows(expert: EpisodeDataset, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the demonstrations every method trains on, and the rows held out from all of them.

    Whole expert episodes (at least one) are held out. With a single episode there is nothing
    to hold out by episode, so its last ``val_fraction`` of transitions is held out instead (a
    contiguous chunk, never interleaved with training transitions). BC early stopping scores
    the held-out rows; the improvement learners never see them either (method.md section 6).
    """
    if expert.n_episodes >= 2:
        starts = expert.episode_starts
        rows = lambda eps: np.concatenate([np.arange(starts[e], starts[e + 1]) for e in eps])
        return tuple(rows(eps) for eps in _held_out_episodes(expert.n_episodes, val_fraction, seed))
    length = expert.n_transitions
    cut = max(1, int(round(length * (1 - val_fraction))))
    if cut >= length:
        return np.arange(length), np.arange(length)
    return np.arange(cut), np.arange(cut, length)


def split_expert_episodes(expert: EpisodeDataset, val_fraction: float, seed: int
                          ) -> tuple[EpisodeDataset, EpisodeDataset]:
    """`expert_split_rows` as (train, held-out) datasets."""
    if expert.n_episodes >= 2:
        return tuple(expert.select_episodes(eps) for eps in _held_out_episodes(expert.n_episodes, val_fraction, seed))
    def part(rows: np.ndarray) -> EpisodeDataset:
        arrays = {k: getattr(expert, k)[rows] for k in
                  ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
        return EpisodeDataset(**arrays, episode_starts=np.array([0, len(rows)]), meta=dict(expert.meta))
    return tuple(part(rows) for rows in expert_split_rows(expert, val_fraction, seed))


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
    opt = adam(policy.parameters(), lr, next(policy.parameters()).device, weight_decay)
    # The starting point is logged but never kept: with one demonstration the held-out MSE of an
    # untrained MLP (actions ~0) can beat every trained snapshot, and an untrained "BC" is no baseline.
    curve = [{"step": step_offset, **evaluate_bc(policy, *val), "train_loss": float("nan")}]
    best, best_state, best_step, since_best = {"val_mse": float("inf")}, None, 0, 0
    start, step = time.time(), 0
    bar = progress(range(1, steps + 1), desc=desc, mininterval=2.0, leave=False)
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


# -- several seeds of one fit as one vectorised model --------------------------------------
EVAL_KEYS = ("val_mse", "val_nll", "entropy")


def seed_bc_loss(stack: SeedStack, obs: torch.Tensor, act: torch.Tensor, kind: str,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """`bc_loss` of every seed of ``stack`` on (S, B, .) batches: (S,); ``weights`` (S, B) make it
    advantage-weighted (AWR's actor). The networks run vmapped; the tanh-Gaussian density runs outside
    vmap on (S, B, d) tensors (log_ndtr has no batching rule)."""
    def mean(per_sample: torch.Tensor) -> torch.Tensor:
        return (per_sample if weights is None else weights * per_sample).mean(-1)
    if kind != "nll" and isinstance(stack.template[0], HetStatPolicy):
        # faithful / mse: the variance head reads the features detached (or not at all)
        f = stack.call("stationary_features", obs)
        loc = stack.call("loc", f)
        std = None if kind == "mse" else stack.call("std", f.detach())
    else:
        loc, std = stack.call("dist_params", obs)
    if kind == "nll":
        return -mean(tanh_gaussian_log_prob(loc, std, act))
    mse = mean((torch.tanh(loc) - act).pow(2).mean(-1))
    if kind == "mse":
        return mse
    return mse - mean(tanh_gaussian_log_prob(loc.detach(), std, act))


class SeedFit:
    """The BC update and the held-out evaluation of S seeds of one policy, as one vectorised model.

    ``policies[k]`` is seed k's initialised policy, ``rng.gens[k]`` its stream: seed k's minibatch
    indices and evaluation noise come from its own generator, outside the vmapped call. The loss
    summed over seeds gives each slice its own gradient, and Adam (L2 weight decay included) is
    elementwise, so one fused Adam over the stacked tensors steps every seed as its own would.
    Nothing here reads back to the host.
    """

    def __init__(self, policies: list[Policy], rng: SeedRNG, train: Batch, *, lr: float, weight_decay: float,
                 loss: str, batch_size: int):
        self.stack, self.rng, self.n = SeedStack(policies), rng, len(policies)
        self.obs, self.act = train
        self.batch_size = batch_size
        device = self.obs.device
        self.opt = adam(self.stack.parameters(), lr, device, weight_decay)
        self.loss = loss

    def update(self) -> torch.Tensor:
        """One Adam step of every seed on its own minibatch; returns the (S,) losses (detached)."""
        idx = self.rng.randint(self.obs.shape[0], (self.batch_size,))
        l = seed_bc_loss(self.stack, self.obs[idx], self.act[idx], self.loss)
        self.opt.zero_grad(set_to_none=True)
        l.sum().backward()
        self.opt.step()
        return l.detach()

    @torch.no_grad()
    def evaluate(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """(S, 3): `evaluate_bc`'s val_mse, val_nll and entropy per seed (entropy noise from each seed's stream)."""
        loc, std = self.stack.call("dist_params", obs, detach=True, shared=(True,))
        mse = (torch.tanh(loc) - act).pow(2).mean((1, 2))
        nll = -tanh_gaussian_log_prob(loc, std, act).mean(-1)
        sample = torch.tanh(loc + std * self.rng.randn(tuple(loc.shape[1:])))
        entropy = -tanh_gaussian_log_prob(loc, std, sample).mean(-1)
        return torch.stack([mse, nll, entropy], dim=1)


def seed_streams(make_policy: Callable[[], Policy], seeds: list[int], device: torch.device
                 ) -> tuple[list[Policy], SeedRNG]:
    """Seed k's policy and stream exactly as a lone `fit` had them: `seed_everything(seed)`, construct, then
    the generator continues from torch's global state after construction (what `batch_sampler` and
    `evaluate_bc` would draw from next). Leaves the global RNGs seeded by the last seed, as a loop of fits did."""
    policies, states = [], []
    for seed in seeds:
        seed_everything(seed)
        policies.append(make_policy().to(device))
        states.append(torch.get_rng_state() if device.type == "cpu" else
                      torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
    rng = SeedRNG(seeds, device)          # other devices: a generator seeded with the seed
    for g, state in zip(rng.gens, states):
        if state is not None:
            g.set_state(state)
    return policies, rng


def fit_seeds(make_policy: Callable[[], Policy], seeds: list[int], train: Batch, val: Batch, *, steps: int,
              lr: float, weight_decay: float, loss: str, eval_every: int, patience: int, batch_size: int,
              device: torch.device, keep: str = "best", desc: str = "bc", step_offset: int = 0
              ) -> tuple[list[Policy], list[FitResult]]:
    """`fit` with uniform minibatches of ``train`` for every seed in ``seeds`` at once (one vectorised model).

    Seed k is initialised by `seed_everything(seed)` then ``make_policy()`` (as a lone fit), draws its own
    minibatches and evaluation noise (`seed_streams`), and keeps its own result: keep="last" runs all
    ``steps``; keep="best" keeps each seed's best held-out-MSE snapshot, a seed whose patience has run out
    keeps the best it had then (its later evaluations are not logged), and the fit stops when every seed
    has run out. The training loop reads the host once per evaluation (every ``eval_every`` steps).
    Returns seed k's plain policy (in train mode, as `fit` leaves it) and its FitResult; ``wall_s`` is the
    wall time of the whole batched fit.
    """
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    policies, rng = seed_streams(make_policy, seeds, device)
    fitter = SeedFit(policies, rng, train, lr=lr, weight_decay=weight_decay, loss=loss, batch_size=batch_size)
    first = fitter.evaluate(*val).tolist()
    curves = [[{"step": step_offset, **dict(zip(EVAL_KEYS, first[k])), "train_loss": float("nan")}]
              for k in range(n)]
    best = [{"val_mse": float("inf")} for _ in range(n)]
    best_step, since_best, steps_run = [0] * n, [0] * n, [0] * n
    has_best, active = [False] * n, [True] * n
    snapshot = [p.detach().clone() for p in fitter.stack.stacked] if keep == "best" else []
    start, step = time.time(), 0
    bar = progress(range(1, steps + 1), desc=desc, mininterval=2.0, leave=False)
    running = torch.zeros(n, device=train[0].device)
    for step in bar:
        running += fitter.update()
        if step % eval_every == 0 or step == steps:
            rows = torch.cat([fitter.evaluate(*val), running.unsqueeze(1)], dim=1).tolist()   # the one host read
            running.zero_()
            improved = []
            for k in range(n):
                if not active[k]:
                    continue
                metrics = dict(zip(EVAL_KEYS, rows[k][:3]))
                curves[k].append({"step": step_offset + step, **metrics, "train_loss": rows[k][3] / eval_every})
                steps_run[k] = step
                if keep == "last":
                    best[k], best_step[k] = metrics, step
                elif metrics["val_mse"] < best[k]["val_mse"]:
                    best[k], best_step[k], since_best[k], has_best[k] = metrics, step, 0, True
                    improved.append(k)
                else:
                    since_best[k] += 1
                    active[k] = since_best[k] < patience
            with torch.no_grad():
                for k in improved:
                    for saved, p in zip(snapshot, fitter.stack.stacked):
                        saved[k].copy_(p[k])
            mses = [rows[k][0] for k in range(n)]
            bar.set_postfix(val_mse=f"{min(mses):.4f}-{max(mses):.4f}", running=sum(active))
            if not any(active):
                break
    bar.close()
    wall = time.time() - start
    results = []
    with torch.no_grad():
        for k in range(n):
            if has_best[k]:
                for saved, p in zip(snapshot, fitter.stack.stacked):
                    p[k].copy_(saved[k])
            elif keep != "last" or steps == 0:   # steps == 0: nothing was trained
                best[k] = curves[k][0]
            results.append(FitResult(best_step=best_step[k], steps_run=steps_run[k], wall_s=wall, best=best[k],
                                     curve=curves[k]))
            log.info("%s, seed %d: best val_mse %.4f val_nll %.3f at step %d of %d", desc, seeds[k],
                     best[k]["val_mse"], best[k]["val_nll"], best_step[k], steps_run[k])
    log.info("%s: %d seeds in one vectorised fit, %.1fs", desc, n, wall)
    return [fitter.stack.member(k, policies[k]) for k in range(n)], results


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
