"""Termination rules for model rollouts: ``fn(obs, act, next_obs) -> (B,) bool`` on any device.

Rules follow gymnasium's own ``is_healthy`` for the v5 environments (default constructor
arguments, default observation layouts), written on the *observation* so they apply to
model predictions:

  Hopper       alive iff 0.7 < obs[0] (height), -0.2 < obs[1] (angle) < 0.2 and
               -100 < obs[i] < 100 for every i >= 1. The reference implementations (MOPO,
               OfflineRL-Kit) write ``np.abs(next_obs[:, 1:] < 100)``, i.e. the absolute
               value of the comparison, so the lower bound is never checked; fixed here.
  Walker2d     alive iff 0.8 < obs[0] < 2.0 and -1 < obs[1] < 1.
  Ant          alive iff every entry is finite and 0.2 <= obs[0] <= 1.0 (inclusive, as in
               gymnasium). obs[0] is the torso height in every Ant layout: v5's default 105
               dims (qpos[2:], qvel, cfrc_ext[1:]), 27 dims without contact forces (v4
               default), and D4RL's 111 dims.
  HalfCheetah  never terminates.

Comparisons are written so that NaN counts as unhealthy (NaN compares False).
Every rule in ``auto`` mode, and ``bounds`` mode on its own, also stop when any
|next_obs| exceeds ``obs_bound`` (or is not finite). ``none`` never terminates.

The env's Hopper rule checks unclipped joint velocities while the observation clips them
to +-10, so a real Hopper velocity beyond 100 is the one case this obs-based rule cannot see.
"""
from __future__ import annotations

from typing import Callable

import torch

from pipeline.envs import env_family
from pipeline.errors import ParamsError

TerminationFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

def hopper_terminated(next_obs: torch.Tensor) -> torch.Tensor:
    height, angle, rest = next_obs[:, 0], next_obs[:, 1], next_obs[:, 1:]
    healthy = ((height > 0.7) & (angle > -0.2) & (angle < 0.2)
               & ((rest > -100.0) & (rest < 100.0)).all(-1))
    return ~healthy


def walker2d_terminated(next_obs: torch.Tensor) -> torch.Tensor:
    height, angle = next_obs[:, 0], next_obs[:, 1]
    healthy = (height > 0.8) & (height < 2.0) & (angle > -1.0) & (angle < 1.0)
    return ~healthy


def ant_terminated(next_obs: torch.Tensor) -> torch.Tensor:
    height = next_obs[:, 0]
    healthy = torch.isfinite(next_obs).all(-1) & (height >= 0.2) & (height <= 1.0)
    return ~healthy


def halfcheetah_terminated(next_obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)


def out_of_bounds(next_obs: torch.Tensor, bound: float) -> torch.Tensor:
    """Any |entry| > bound, or any entry not finite (NaN <= bound is False)."""
    return ~(next_obs.abs() <= bound).all(-1)


# family name (lower case, as in "Hopper-v5" -> "hopper") -> (rule, observation sizes it knows)
RULES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[int, ...]]] = {
    "hopper": (hopper_terminated, (11,)),
    "walker2d": (walker2d_terminated, (17,)),
    "halfcheetah": (halfcheetah_terminated, (17,)),
    "ant": (ant_terminated, (105, 27, 111)),
}


def make_termination_fn(env_id: str, mode: str = "auto", obs_bound: float = 100.0,
                        obs_dim: int | None = None) -> TerminationFn:
    """Build the termination rule for ``env.id`` / ``env.termination`` / ``env.obs_bound``.

    ``mode`` and ``obs_bound`` are validated params (`pipeline.config`). ``obs_dim`` (optional)
    is checked against the known layouts of ``env_id`` in ``auto`` mode, so a dataset from
    another environment fails here instead of silently using the wrong rule; an ``env_id``
    without a known rule fails too (both depend on the rule table here and on the data).
    """
    if mode not in ("auto", "none", "bounds") or not obs_bound > 0:
        raise ValueError(f"mode must be auto, none or bounds and obs_bound > 0, got {mode!r}, {obs_bound!r}")
    if mode == "none":
        def no_termination(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
            return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)
        return no_termination
    if mode == "bounds":
        def bounds_only(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
            return out_of_bounds(next_obs, obs_bound)
        return bounds_only

    family = env_family(env_id)
    if family not in RULES:
        raise ParamsError(
            f"params.yaml: no termination rule is known for env.id {env_id!r} (known: Hopper, Walker2d, "
            f"HalfCheetah, Ant); set 'env.termination' to 'bounds' (stop only when |state| > env.obs_bound) "
            f"or 'none' (never terminate)")
    rule, dims = RULES[family]
    if obs_dim is not None and obs_dim not in dims:
        raise ParamsError(
            f"params.yaml: env.id {env_id!r} has observations of size {' or '.join(map(str, dims))} but the "
            f"data has {obs_dim}; set env.id to the data's environment, or 'env.termination' to bounds or none")

    def terminated(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        return rule(next_obs) | out_of_bounds(next_obs, obs_bound)
    return terminated
