"""Tanh-squashed Gaussian log-densities, written once for every policy.

Actions in demonstrations often sit exactly at +-1, where atanh is infinite. As in
CSIL's official code (Acme's TanhTransformedDistribution) actions are clipped to
+-``clip`` and, at the clip, the log-density is replaced by the log of the Gaussian
tail mass beyond atanh(clip), which is finite.
"""
from __future__ import annotations

import math

import torch
from torch.special import log_ndtr

ACTION_CLIP = 0.999
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def tanh_log_det_jacobian(u: torch.Tensor) -> torch.Tensor:
    """log |d tanh(u) / du| = log(1 - tanh(u)^2), computed stably, elementwise."""
    return 2.0 * (math.log(2.0) - u - torch.nn.functional.softplus(-2.0 * u))


def tanh_gaussian_log_prob(loc: torch.Tensor, std: torch.Tensor, actions: torch.Tensor,
                           clip: float = ACTION_CLIP) -> torch.Tensor:
    """log q(a|s) of squashed-Gaussian actions in [-1, 1]^d, summed over the last dim."""
    a = actions.clamp(-clip, clip)
    u = torch.atanh(a)
    z = (u - loc) / std
    inner = -0.5 * z.pow(2) - std.log() - _LOG_SQRT_2PI - tanh_log_det_jacobian(u)
    u_clip = math.atanh(clip)
    upper = log_ndtr(-(u_clip - loc) / std)   # log P(u >= atanh(clip))
    lower = log_ndtr((-u_clip - loc) / std)   # log P(u <= -atanh(clip))
    lp = torch.where(actions >= clip, upper, torch.where(actions <= -clip, lower, inner))
    return lp.sum(-1)


def tanh_gaussian_sample(loc: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised sample a = tanh(u) and its log-density (sampled u is never clipped)."""
    u = loc + std * torch.randn_like(loc)
    z = (u - loc) / std
    log_prob = (-0.5 * z.pow(2) - std.log() - _LOG_SQRT_2PI - tanh_log_det_jacobian(u)).sum(-1)
    return torch.tanh(u), log_prob
