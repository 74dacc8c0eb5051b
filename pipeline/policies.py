"""Policies: a plain tanh-Gaussian MLP (SAC actor, BC baseline) and CSIL's HetStat policy.

Every policy maps raw observations to a distribution over actions in [-1, 1]^d and
carries its own observation normaliser (buffers, so they travel in the state dict).
Interface shared by all policies:
  dist_params(obs) -> (loc, std)   pre-tanh Gaussian parameters
  log_prob(obs, act) -> (B,)
  sample(obs) -> (act, log_prob)
  act(obs) -> deterministic action tanh(loc)
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.distributions import tanh_gaussian_log_prob, tanh_gaussian_sample
from pipeline.nets import mlp


class ObsNormalizer(nn.Module):
    def __init__(self, obs_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    def set(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


class Policy(nn.Module):
    """Shared sampling / log-prob code; subclasses implement ``dist_params``."""

    normalizer: ObsNormalizer

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        loc, std = self.dist_params(obs)
        return tanh_gaussian_log_prob(loc, std, act)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, std = self.dist_params(obs)
        return tanh_gaussian_sample(loc, std)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        loc, _ = self.dist_params(obs)
        return torch.tanh(loc)


class TanhGaussianMLP(Policy):
    """MLP -> (loc, log_std), log_std clamped to [log_std_min, log_std_max]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256),
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, tuple(hidden)
        self.normalizer = ObsNormalizer(obs_dim)
        self.net = mlp(obs_dim, self.hidden, 2 * act_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_std = self.net(self.normalizer(obs)).chunk(2, dim=-1)
        return loc, log_std.clamp(self.log_std_min, self.log_std_max).exp()

    def config(self) -> dict:
        return {"kind": "mlp", "obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden": list(self.hidden)}


POLICY_KINDS: dict[str, type[Policy]] = {"mlp": TanhGaussianMLP}


def policy_from_config(config: dict) -> Policy:
    kind = config["kind"]
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy kind {kind!r}; known: {sorted(POLICY_KINDS)}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k != "kind"}
    return POLICY_KINDS[kind](**kwargs)


def save_policy(policy: Policy, path, **extra) -> None:
    """Checkpoint = {"config": ..., "state_dict": ..., **extra}; loads with weights_only=True."""
    from pipeline.utils import atomic_torch_save
    atomic_torch_save({"config": policy.config(), "state_dict": policy.state_dict(), **extra}, path)


def load_policy(path, device: torch.device | str = "cpu") -> Policy:
    """Rebuild a policy saved by `save_policy` (or the SAC trainer) on ``device``, in eval mode."""
    from pathlib import Path
    path = Path(path)
    if not path.exists():
        from pipeline.stage import ArtefactError
        raise ArtefactError(f"{path}: policy checkpoint not found; run the stage that writes it (dvc repro)")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    policy = policy_from_config(ckpt["config"])
    policy.load_state_dict(ckpt["state_dict"])
    return policy.to(device).eval()
