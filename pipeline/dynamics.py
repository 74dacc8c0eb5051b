"""Probabilistic ensemble dynamics model (method.md section 3), its training, and model rollouts.

`EnsembleDynamics` holds E members (default 7, 5 elites) of n_layers x hidden SiLU MLPs, all
evaluated with one batched matmul per layer (`pipeline.nets.EnsembleMLP`). Each member
predicts a diagonal Gaussian over the standardised target y = ([next_obs - obs, (reward)] -
target_mean) / target_std from the standardised input [obs, act]. The log-variance is
soft-clamped between learnable bounds. Standardisation statistics and the elite indices are
buffers, so they travel in the state dict.

API used by the improvement stage:
  load_dynamics(path, device) -> EnsembleDynamics
  model.step(obs, act) -> (next_obs, reward or None)   random elite per sample, Gaussian draw
  model.log_prob(obs, act, next_obs) -> (B,)            elite-mixture log-density, differentiable
  model.nll_loss(obs, act, next_obs) -> scalar          the supervised training loss, differentiable
  rollout(model, policy_act, start_obs, horizon, termination_fn) -> dict of alive transitions
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import DynamicsConfig
from pipeline.datasets import EpisodeDataset
from pipeline.errors import ArtefactError
from pipeline.nets import EnsembleLinear, EnsembleMLP
from pipeline.termination import TerminationFn
from pipeline.utils import atomic_torch_save
from pipeline.utils import progress as progress_bar

log = logging.getLogger(__name__)

DEFAULT_WEIGHT_DECAY = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
LOGVAR_BOUND_COEF = 0.01


class EnsembleDynamics(nn.Module):
    """E Gaussian MLPs over [delta obs, (reward)] given [obs, act]; see the module docstring."""

    def __init__(self, obs_dim: int, act_dim: int, n_members: int = 7, n_elites: int = 5, hidden: int = 200,
                 n_layers: int = 4, learn_reward: bool = False,
                 weight_decay: tuple[float, ...] | list[float] = DEFAULT_WEIGHT_DECAY):
        super().__init__()
        if not 0 < n_elites <= n_members:
            raise ValueError(f"n_elites must be in 1..n_members ({n_members}), got {n_elites}")
        if len(weight_decay) != n_layers + 1:
            raise ValueError(f"weight_decay needs one value per layer ({n_layers + 1}), got {list(weight_decay)}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.n_members, self.n_elites = n_members, n_elites
        self.hidden, self.n_layers, self.learn_reward = hidden, n_layers, learn_reward
        self.weight_decay = tuple(float(w) for w in weight_decay)
        self.in_dim = obs_dim + act_dim
        self.target_dim = obs_dim + int(learn_reward)
        self.net = EnsembleMLP(n_members, self.in_dim, (hidden,) * n_layers, 2 * self.target_dim, nn.SiLU)
        self.max_logvar = nn.Parameter(torch.full((self.target_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((self.target_dim,), -10.0))
        self.register_buffer("in_mean", torch.zeros(self.in_dim))
        self.register_buffer("in_std", torch.ones(self.in_dim))
        self.register_buffer("target_mean", torch.zeros(self.target_dim))
        self.register_buffer("target_std", torch.ones(self.target_dim))
        self.register_buffer("elites", torch.arange(n_elites))
        self.termination: dict | None = None   # the env's termination settings, set by load_dynamics

    @classmethod
    def from_config(cls, cfg: DynamicsConfig, obs_dim: int, act_dim: int) -> "EnsembleDynamics":
        return cls(obs_dim, act_dim, n_members=cfg.n_members, n_elites=cfg.n_elites, hidden=cfg.hidden,
                   n_layers=cfg.n_layers, learn_reward=cfg.learn_reward, weight_decay=tuple(cfg.weight_decay))

    def config(self) -> dict:
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "n_members": self.n_members,
                "n_elites": self.n_elites, "hidden": self.hidden, "n_layers": self.n_layers,
                "learn_reward": self.learn_reward, "weight_decay": list(self.weight_decay)}

    @property
    def layers(self) -> list[EnsembleLinear]:
        return [*self.net.hidden, self.net.out]

    # -- standardisation -----------------------------------------------------------------
    def fit_normalizer(self, inputs: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Set the input / target statistics from raw (N, in) inputs and (N, target) targets.

        ``rows`` restricts the statistics to those rows (the training split); they are
        accumulated in float64 chunks so no copy of the split is made.
        """
        rows = torch.arange(inputs.shape[0], device=inputs.device) if rows is None else rows
        for data, mean, std in ((inputs, self.in_mean, self.in_std), (targets, self.target_mean, self.target_std)):
            total = torch.zeros(data.shape[1], dtype=torch.float64, device=data.device)
            total_sq = torch.zeros_like(total)
            for chunk in rows.split(65536):
                x = data[chunk].double()
                total += x.sum(0)
                total_sq += x.pow(2).sum(0)
            m = total / len(rows)
            s = (total_sq / len(rows) - m.pow(2)).clamp_min(0.0).sqrt()
            mean.copy_(m)
            std.copy_(torch.where(s < 1e-12, torch.ones_like(s), s))

    def raw_targets(self, obs: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor | None = None
                    ) -> torch.Tensor:
        delta = next_obs - obs
        if not self.learn_reward:
            return delta
        if reward is None:
            raise ValueError("this dynamics model predicts the reward: pass `reward`")
        return torch.cat([delta, reward.reshape(-1, 1)], dim=-1)

    def normalize_inputs(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return (torch.cat([obs, act], dim=-1) - self.in_mean) / self.in_std

    def normalize_targets(self, obs: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor | None = None
                          ) -> torch.Tensor:
        return (self.raw_targets(obs, next_obs, reward) - self.target_mean) / self.target_std

    # -- network -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised input (E, B, in) or (B, in) -> (mean, logvar), each (E, B, target).

        ``members`` restricts the evaluation to those members (x is then (len(members), B, in)).
        """
        mean, logvar = self.net(x, members).split(self.target_dim, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def regularizer(self, weight_decay: bool = True) -> torch.Tensor:
        """Log-variance bound term + per-layer weight decay 0.5 wd ||W||^2 (summed over members)."""
        reg = LOGVAR_BOUND_COEF * (self.max_logvar.sum() - self.min_logvar.sum())
        if weight_decay:
            reg = reg + sum(0.5 * wd * layer.weight.pow(2).sum() for wd, layer in zip(self.weight_decay, self.layers))
        return reg

    def member_losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised x (E, B, in), y (E, B, target) -> per-member Gaussian loss and MSE, each (E,)."""
        mean, logvar = self(x)
        sq = (mean - y).pow(2)
        nll = (sq * torch.exp(-logvar) + logvar).mean(dim=(1, 2))
        return nll, sq.detach().mean(dim=(1, 2))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, weight_decay: bool = True) -> torch.Tensor:
        """The loss minimised in training: member losses summed over members + regulariser.

        ``weight_decay=False`` leaves the decay term out for an optimiser that applies it
        itself (`make_optimizer`), which gives the same gradient.
        """
        nll, _ = self.member_losses(x, y)
        return nll.sum() + self.regularizer(weight_decay)

    # -- API for the improvement stage -----------------------------------------------------
    def nll_loss(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor,
                 reward: torch.Tensor | None = None) -> torch.Tensor:
        """Supervised training loss on a real (B, .) batch, every member on the same batch; differentiable."""
        x = self.normalize_inputs(obs, act).unsqueeze(0).expand(self.n_members, -1, -1)
        y = self.normalize_targets(obs, next_obs, reward).unsqueeze(0).expand(self.n_members, -1, -1)
        return self.training_loss(x, y)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor,
                 reward: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) log-density of next_obs (and reward, if given and modelled) under the elite mixture.

        The density is the uniform mixture over the elites, log mean_k N(y | mu_k, sigma_k),
        in raw next_obs units (includes the standardisation Jacobian). This is the
        density `step` samples from, as in OfflineRL-Kit's RAMBO. Differentiable w.r.t.
        the model parameters.
        """
        x = self.normalize_inputs(obs, act)
        mean, logvar = self(x, self.elites)                       # (K, B, target)
        if self.learn_reward and reward is not None:
            y, dims = self.normalize_targets(obs, next_obs, reward), self.target_dim
        else:   # a diagonal Gaussian's marginal over the observation dims: drop the reward dim
            y, dims = (next_obs - obs - self.target_mean[:self.obs_dim]) / self.target_std[:self.obs_dim], self.obs_dim
            mean, logvar = mean[..., :dims], logvar[..., :dims]
        log_det = torch.log(self.target_std[:dims]).sum()
        member_lp = -0.5 * ((y - mean).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(member_lp, dim=0) - math.log(len(self.elites)) - log_det

    @torch.no_grad()
    def step(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample next_obs (and reward if modelled) from a uniformly random elite per sample.

        The elites are assigned through a random balanced partition of the batch (a random
        permutation into equal slots per elite), so only the chosen elite is evaluated for
        each sample, as one batched matmul of B / n_elites rows per elite.
        """
        n, k = obs.shape[0], len(self.elites)
        m = -(-n // k)
        slots = torch.randperm(k * m, device=obs.device)[:n]
        x = self.normalize_inputs(obs, act)
        xs = x.new_zeros(k * m, self.in_dim)
        xs[slots] = x
        mean, logvar = self(xs.view(k, m, self.in_dim), self.elites)
        mean = mean.reshape(k * m, self.target_dim)[slots]
        std = torch.exp(0.5 * logvar).reshape(k * m, self.target_dim)[slots]
        y = (mean + std * torch.randn_like(mean)) * self.target_std + self.target_mean
        next_obs = obs + y[:, :self.obs_dim]
        return next_obs, (y[:, self.obs_dim] if self.learn_reward else None)

    @torch.no_grad()
    def mean_step(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Deterministic prediction: the mean over elites of each elite's mean."""
        mean, _ = self(self.normalize_inputs(obs, act), self.elites)
        y = mean.mean(0) * self.target_std + self.target_mean
        return obs + y[:, :self.obs_dim], (y[:, self.obs_dim] if self.learn_reward else None)

    @torch.no_grad()
    def disagreement(self, obs: torch.Tensor, act: torch.Tensor, chunk: int = 16_384) -> torch.Tensor:
        """(B,) max over elites of ||mu_k - mean_k mu_k|| on the standardised state change: how much
        the elites disagree at (s, a), MOReL's unknown-state detector (0 where they agree)."""
        parts = []
        for o, a in zip(obs.split(chunk), act.split(chunk)):
            mean, _ = self(self.normalize_inputs(o, a), self.elites)
            mu = mean[..., :self.obs_dim]
            parts.append((mu - mu.mean(0)).norm(dim=-1).max(0).values)
        return torch.cat(parts)

    @torch.no_grad()
    def holdout_mse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-member (E,) MSE of the mean on standardised (B, in) inputs / (B, target) targets."""
        mean, _ = self(x)
        return (mean - y).pow(2).mean(dim=(1, 2))


# -- checkpoint ------------------------------------------------------------------------------
def save_dynamics(model: EnsembleDynamics, path: str | Path, **extra) -> None:
    """Checkpoint {"config", "state_dict", **extra}; loads with weights_only=True."""
    atomic_torch_save({"config": model.config(), "state_dict": model.state_dict(), **extra}, path)


def load_dynamics(path: str | Path, device: torch.device | str = "cpu") -> EnsembleDynamics:
    """Rebuild the ensemble saved by the dynamics stage on ``device``, in eval mode.

    ``model.termination`` is set to the checkpoint's termination settings
    (``{"env_id", "mode", "obs_bound"}`` for `make_termination_fn`) when it has them.
    """
    path = Path(path)
    if not path.exists():
        raise ArtefactError(f"{path}: dynamics model not found; run `dvc repro dynamics`")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        raise ArtefactError(f"{path}: cannot load the dynamics checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); re-run `dvc repro dynamics`") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ArtefactError(f"{path}: not a dynamics checkpoint (expected keys 'config' and 'state_dict'); "
                            f"re-run `dvc repro dynamics`")
    try:
        model = EnsembleDynamics(**ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ArtefactError(f"{path}: checkpoint does not match EnsembleDynamics ({str(exc).splitlines()[0]}); "
                            f"re-run `dvc repro dynamics`") from None
    model.termination = ckpt.get("termination")
    return model.to(device).eval()


# -- training --------------------------------------------------------------------------------
@dataclass
class FitResult:
    holdout_mse: list[float]         # per member, best snapshot, standardised target space
    elites: list[int]
    epochs: int
    steps: int
    stopped_early: bool
    n_train: int
    n_holdout: int
    wall_s: float
    curve: list[dict] = field(default_factory=list)


def make_optimizer(model: EnsembleDynamics, lr: float) -> torch.optim.Optimizer:
    """Adam with the per-layer weight decay as Adam's (coupled, L2) ``weight_decay``.

    Adam's weight_decay adds wd * W to the gradient, exactly the gradient of the loss term
    0.5 wd ||W||^2, so `train_step` minimises the same objective as `nll_loss`; doing it
    inside the fused optimiser saves ~10 % of a CPU training step.
    """
    decayed = [{"params": [layer.weight], "weight_decay": wd} for wd, layer in zip(model.weight_decay, model.layers)]
    ids = {id(layer.weight) for layer in model.layers}
    rest = {"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": 0.0}
    # the fused kernel is several times faster than the default on CPU for ~1M parameters
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.Adam(decayed + [rest], lr=lr, fused=fused)


def train_step(model: EnsembleDynamics, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
               ) -> torch.Tensor:
    """One step on standardised (E, B, in) / (E, B, target) batches with an optimiser from
    `make_optimizer` (which applies the weight decay); returns the detached loss without decay."""
    loss = model.training_loss(x, y, weight_decay=False)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _member_tensors(model: EnsembleDynamics) -> list[torch.Tensor]:
    """The per-member parameters (leading dim E) that a member snapshot saves and restores."""
    return [t for layer in model.layers for t in (layer.weight, layer.bias)]


def fit_dynamics(model: EnsembleDynamics, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor,
                 reward: torch.Tensor | None = None, *, lr: float = 1e-3, batch_size: int = 256,
                 max_epochs: int = 200, max_epoch_steps: int = 1000, patience: int = 5, holdout: int = 1000,
                 min_improvement: float = 0.01, seed: int = 0, progress: bool = True) -> FitResult:
    """Train the ensemble on (N, .) transition tensors (all on the model's device).

    Holdout: min(20 % of N, ``holdout``) random transitions. Inputs and targets are
    standardised on the rest. Each member trains on its own bootstrap resample of the
    training split; an epoch is one pass over it, capped at ``max_epoch_steps`` steps.
    After every epoch each member whose holdout MSE dropped by more than
    ``min_improvement`` (relative) keeps a snapshot; training stops after ``patience``
    epochs with no member improving, or at ``max_epochs``. The best snapshots are
    restored and the ``n_elites`` members with the lowest holdout MSE become the elites.
    """
    start = time.time()
    device = obs.device
    n = obs.shape[0]
    n_hold = min(int(0.2 * n), holdout)
    if n < 10 or n_hold < 1:
        raise ValueError(f"need at least 10 transitions to train the dynamics model, got {n}")
    gen = torch.Generator(device=device).manual_seed(seed)
    perm = torch.randperm(n, generator=gen, device=device)
    hold_idx, train_idx = perm[:n_hold], perm[n_hold:]
    n_train = n - n_hold

    inputs = torch.cat([obs, act], dim=-1)
    targets = model.raw_targets(obs, next_obs, reward)
    model.fit_normalizer(inputs, targets, train_idx)
    inputs.sub_(model.in_mean).div_(model.in_std)
    targets.sub_(model.target_mean).div_(model.target_std)
    x_hold, y_hold = inputs[hold_idx], targets[hold_idx]

    E = model.n_members
    boot = train_idx[torch.randint(0, n_train, (E, n_train), generator=gen, device=device)]
    steps_per_epoch = min(math.ceil(n_train / batch_size), max_epoch_steps)
    opt = make_optimizer(model, lr)
    best_mse = torch.full((E,), float("inf"), device=device)
    best = [t.detach().clone() for t in _member_tensors(model)]
    curve, epochs_since, epoch, steps, stopped_early = [], 0, 0, 0, False
    bar = progress_bar(range(1, max_epochs + 1), desc="dynamics", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        # each member visits its own bootstrap sample in a fresh random order
        order = torch.stack([torch.randperm(n_train, generator=gen, device=device)[:steps_per_epoch * batch_size]
                             for _ in range(E)])
        batches = torch.gather(boot, 1, order)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = batches[:, i * batch_size:(i + 1) * batch_size]
            loss_sum += train_step(model, opt, inputs[idx], targets[idx])
        steps += steps_per_epoch

        model.eval()
        mse = model.holdout_mse(x_hold, y_hold)
        improved = mse < best_mse * (1.0 - min_improvement)     # relative drop > min_improvement
        best_mse = torch.where(improved, mse, best_mse)
        with torch.no_grad():
            for b, t in zip(best, _member_tensors(model)):
                b[improved] = t[improved]
        n_improved = int(improved.sum())
        epochs_since = 0 if n_improved else epochs_since + 1
        row = {"epoch": epoch, "step": steps, "train_loss": loss_sum.item() / steps_per_epoch,
               "holdout_mse": mse.mean().item(), "holdout_mse_min": mse.min().item(),
               "improved": n_improved,
               **{f"holdout_mse_m{k}": v for k, v in enumerate(mse.tolist())}}
        curve.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", holdout=f"{row['holdout_mse']:.4f}", stale=epochs_since)
        if epochs_since >= patience:
            stopped_early = True
            break
    bar.close()

    with torch.no_grad():
        for b, t in zip(best, _member_tensors(model)):
            t.copy_(b)
    model.eval()
    mse = model.holdout_mse(x_hold, y_hold)
    elites = torch.argsort(mse)[:model.n_elites].sort().values
    model.elites.copy_(elites)
    log.info("dynamics: %d epochs (%s), holdout MSE per member %s, elites %s", epoch,
             "early stop" if stopped_early else "max_epochs", [round(v, 4) for v in mse.tolist()], elites.tolist())
    return FitResult(holdout_mse=mse.tolist(), elites=elites.tolist(), epochs=epoch, steps=steps,
                     stopped_early=stopped_early, n_train=n_train, n_holdout=n_hold,
                     wall_s=time.time() - start, curve=curve)


# -- held-out episodes and the multi-step check ----------------------------------------------
def split_heldout_episodes(data: EpisodeDataset, n_episodes: int, min_length: int, seed: int
                           ) -> tuple[EpisodeDataset, EpisodeDataset | None]:
    """Hold out up to ``n_episodes`` random whole episodes of length >= ``min_length``.

    Keeps at least one episode for training; returns (train, None) when nothing qualifies.
    """
    eligible = np.flatnonzero(data.episode_lengths >= min_length)
    n_out = min(n_episodes, len(eligible), data.n_episodes - 1)
    if n_out < 1:
        return data, None
    out = np.sort(np.random.default_rng(seed).choice(eligible, size=n_out, replace=False))
    keep = np.setdiff1d(np.arange(data.n_episodes), out)
    return data.select_episodes(keep), data.select_episodes(out)


@torch.no_grad()
def multistep_error(model: EnsembleDynamics, episodes: EpisodeDataset, horizon: int,
                    device: torch.device | str = "cpu") -> dict:
    """Open-loop ``horizon``-step prediction error along the episodes' recorded actions.

    From every start t with t + horizon inside its episode, predict s_{t+1..t+H} from s_t
    and the recorded actions, with the elite-mean prediction (``mse``) and with sampled
    steps as in rollouts (``mse_sampled``); ``baseline_mse`` predicts s_{t+k} = s_t.
    Errors are mean squared differences in units of each observation dim's std (the
    model's input standardisation), so every dimension counts equally; the headline
    numbers are at step H, ``*_per_step`` lists steps 1..H.
    """
    d = episodes.to_torch(device)
    starts = [np.arange(s, e - horizon + 1) for s, e in zip(episodes.episode_starts[:-1], episodes.episode_starts[1:])]
    t0 = torch.as_tensor(np.concatenate(starts), device=device)
    scale = model.in_std[:model.obs_dim]
    s0 = d["obs"][t0]
    pred_mean, pred_sample = s0, s0
    err = {"mse": [], "mse_sampled": [], "baseline_mse": []}
    for k in range(horizon):
        act, true = d["act"][t0 + k], d["next_obs"][t0 + k]
        pred_mean, _ = model.mean_step(pred_mean, act)
        pred_sample, _ = model.step(pred_sample, act)
        for key, pred in (("mse", pred_mean), ("mse_sampled", pred_sample), ("baseline_mse", s0)):
            err[key].append(((pred - true) / scale).pow(2).mean().item())
    return {"horizon": horizon, "episodes": episodes.n_episodes, "windows": int(t0.shape[0]),
            "mse": err["mse"][-1], "mse_sampled": err["mse_sampled"][-1], "baseline_mse": err["baseline_mse"][-1],
            "ratio_to_baseline": err["mse"][-1] / max(err["baseline_mse"][-1], 1e-12),
            "mse_per_step": err["mse"], "baseline_mse_per_step": err["baseline_mse"]}


# -- rollouts --------------------------------------------------------------------------------
@torch.no_grad()
def rollout(model: EnsembleDynamics, policy_act: Callable[[torch.Tensor], torch.Tensor], start_obs: torch.Tensor,
            horizon: int, termination_fn: TerminationFn, chunk_size: int = 8192) -> dict[str, torch.Tensor]:
    """Roll ``policy_act`` out in the model from (N, obs_dim) ``start_obs`` for ``horizon`` steps.

    Returns the transitions of branches still alive when they were taken: obs, act,
    next_obs (M, .), terminal (M,) float, plus reward (M,) when the model predicts it. A
    branch stops after a terminal transition (the termination function, which includes the
    state-bound stop); a transition whose predicted state is not finite is dropped and
    stops its branch. Everything stays on the device: the loop keeps fixed-size buffers
    and selects the alive rows once at the end (no host sync inside the loop).
    Start states are processed ``chunk_size`` at a time: on CPU, activations of ~8k rows
    stay in cache, which makes a 50k-start rollout ~1.6x faster than one big batch.
    """
    parts = [_rollout_chunk(model, policy_act, chunk, horizon, termination_fn)
             for chunk in start_obs.split(chunk_size)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _rollout_chunk(model: EnsembleDynamics, policy_act: Callable[[torch.Tensor], torch.Tensor],
                   start_obs: torch.Tensor, horizon: int, termination_fn: TerminationFn) -> dict[str, torch.Tensor]:
    alive = torch.ones(start_obs.shape[0], dtype=torch.bool, device=start_obs.device)
    obs = start_obs
    record: dict[str, list[torch.Tensor]] = {"obs": [], "act": [], "next_obs": [], "terminal": [], "reward": []}
    keep = []
    for _ in range(horizon):
        act = policy_act(obs)
        next_obs, reward = model.step(obs, act)
        terminal = termination_fn(obs, act, next_obs)
        valid = alive & torch.isfinite(next_obs).all(-1)
        for key, value in (("obs", obs), ("act", act), ("next_obs", next_obs), ("terminal", terminal.float()),
                           ("reward", reward)):
            if value is not None:
                record[key].append(value)
        keep.append(valid)
        alive = valid & ~terminal
        # stopped branches keep their last valid state so they never feed NaN/inf forward
        obs = torch.where(alive.unsqueeze(-1), next_obs, obs)
    mask = torch.stack(keep)                                       # (H, n): step-major order
    return {key: torch.stack(values)[mask] for key, values in record.items() if values}
