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

import math

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


_PI_DIV_2_SQRT2 = math.pi / (2.0 * math.sqrt(2.0))


def triangle_wave(x: torch.Tensor) -> torch.Tensor:
    """Periodic triangle wave (period 2 pi) scaled by pi / (2 sqrt 2), CSIL's default."""
    z = torch.floor(x / math.pi + 0.5)
    sign = 1.0 - 2.0 * torch.remainder(z, 2.0)   # (-1) ** z
    return _PI_DIV_2_SQRT2 * (x - math.pi * z) * sign


def sin_cos(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) + torch.cos(x)


STATIONARY_ACTIVATIONS = {"triangle": triangle_wave, "sincos": sin_cos}


class HetStatPolicy(Policy):
    """CSIL's stationary heteroscedastic tanh-Gaussian policy.

    ELU torso -> bottleneck h -> stationary periodic features f -> loc = f W_loc and
    std_k = sqrt(prior_var) tanh(sqrt(1e-5 + ||L_k^T f||^2)). Off the data the periodic
    features decorrelate, so loc -> 0 and std -> sqrt(prior_var): the policy returns to
    its prior instead of extrapolating confidently.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, bottleneck: int = 12,
                 features: int = 256, prior_var: float = 0.75, activation: str = "triangle",
                 log_lengthscale_init: float = 0.0):
        super().__init__()
        if features % 2:
            raise ValueError(f"HetStat features must be even, got {features}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden, self.bottleneck, self.features = hidden, bottleneck, features
        self.prior_var, self.activation = prior_var, activation
        self.normalizer = ObsNormalizer(obs_dim)
        self.torso = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                   nn.Linear(hidden, bottleneck), nn.ELU())
        for layer in self.torso:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.random_weights = nn.Parameter(torch.randn(bottleneck, features // 2))
        # CSIL's code starts the log length-scales at -5. With z = h exp(l) W that makes the features
        # nearly constant, and on the embedded Hopper data HetStat BC then did not learn at all in
        # 3k steps (held-out MSE 0.38 vs 0.03 for l = 0, measured): 0 is the default here.
        self.log_lengthscale_init = float(log_lengthscale_init)
        self.log_lengthscales = nn.Parameter(torch.full((bottleneck,), self.log_lengthscale_init))
        self.loc_weights = nn.Parameter(torch.zeros(features, act_dim))
        # Lower-triangular factors L_k of the variance head, stored as raw[i, k, j] = L_k[i, j]
        # so that (F, d*F) is a free view: one matmul gives f^T L_k for every k. The diagonal
        # is exponentiated, so zeros -> identity (CSIL's FillScaleTriL(diag=Exp)).
        self.scale_raw = nn.Parameter(torch.zeros(features, act_dim, features))
        i = torch.arange(features).view(-1, 1, 1)
        j = torch.arange(features).view(1, 1, -1)
        self.register_buffer("strict_lower", (j < i).expand(features, act_dim, features).float(), persistent=False)
        self.phi = STATIONARY_ACTIVATIONS[activation]

    def stationary_features(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.torso(self.normalizer(obs))
        z = (h * self.log_lengthscales.exp()) @ self.random_weights
        f = torch.cat([self.phi(z + math.pi / 4), self.phi(z - math.pi / 4)], dim=-1)
        return f / math.sqrt(self.features)

    def scale_factors(self) -> torch.Tensor:
        """All L_k side by side, shape (F, d*F): column block k is L_k."""
        raw = self.scale_raw
        # exp only on the F x d diagonal entries: two passes over the d*F^2 tensor, not where()'s five
        diagonal = torch.diag_embed(raw.diagonal(dim1=0, dim2=2).exp(), dim1=0, dim2=2)
        return (raw * self.strict_lower + diagonal).view(self.features, self.act_dim * self.features)

    def loc(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.loc_weights

    def std(self, f: torch.Tensor) -> torch.Tensor:
        """sqrt(prior_var) * tanh(sqrt(1e-5 + ||L_k^T f||^2)) for every action dim k."""
        var = (f @ self.scale_factors()).view(*f.shape[:-1], self.act_dim, self.features).pow(2).sum(-1)
        return math.sqrt(self.prior_var) * torch.tanh(torch.sqrt(1e-5 + var))

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.stationary_features(obs)
        return self.loc(f), self.std(f)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        # The variance head is d*F^2 FLOPs per state; the deterministic action needs only the mean.
        return torch.tanh(self.loc(self.stationary_features(obs)))

    def config(self) -> dict:
        return {"kind": "hetstat", "obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden": self.hidden,
                "bottleneck": self.bottleneck, "features": self.features, "prior_var": self.prior_var,
                "activation": self.activation, "log_lengthscale_init": self.log_lengthscale_init}


POLICY_KINDS: dict[str, type[Policy]] = {"mlp": TanhGaussianMLP, "hetstat": HetStatPolicy}


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
    """Rebuild a policy saved by `save_policy` (or the SAC trainer) on ``device``, in eval mode.

    A missing, empty, truncated or foreign file is an ArtefactError naming the file and what a
    policy checkpoint holds.
    """
    from pathlib import Path

    from pipeline.errors import ArtefactError
    path = Path(path)
    expected = (f"expected a policy checkpoint written by save_policy (keys 'config' with 'kind' in "
                f"{sorted(POLICY_KINDS)}, and 'state_dict'); re-run the stage that writes it (dvc repro)")
    if not path.exists():
        raise ArtefactError(f"{path}: policy checkpoint not found; run the stage that writes it (dvc repro)")
    if path.stat().st_size == 0:
        raise ArtefactError(f"{path}: empty file; {expected}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__
        raise ArtefactError(f"{path}: truncated or not a torch checkpoint ({reason}); {expected}") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) and "state_dict" in ckpt
            and ckpt["config"].get("kind") in POLICY_KINDS):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ArtefactError(f"{path}: not a policy checkpoint (found {found}); {expected}")
    try:
        policy = policy_from_config(ckpt["config"])
        policy.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as exc:
        raise ArtefactError(f"{path}: checkpoint does not match its policy config "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            f"{expected}") from None
    return policy.to(device).eval()
