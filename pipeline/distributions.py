"""Tanh-squashed Gaussian log-densities, written once for every policy.

Actions in demonstrations often sit exactly at +-1, where atanh is infinite. As in
CSIL's official code (Acme's TanhTransformedDistribution) actions are clipped to
+-``clip`` and, at the clip, the log-density is the log of the Gaussian tail mass beyond
atanh(clip) spread over the clipped width 1 - clip: log P(u > atanh(clip)) - log(1 - clip).
The tail mass alone is not a density (a saturated Gaussian would integrate to 0.25 and the
log-density would drop 6-9 nats at the clip, biasing the coherent reward against saturated
actions); with the width term the density integrates to 1 over [-1, 1].
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
    log_width = math.log(1.0 - clip)
    upper = log_ndtr(-(u_clip - loc) / std) - log_width   # P(u >= atanh(clip)) over [clip, 1]
    lower = log_ndtr((-u_clip - loc) / std) - log_width   # P(u <= -atanh(clip)) over [-1, -clip]
    lp = torch.where(actions >= clip, upper, torch.where(actions <= -clip, lower, inner))
    return lp.sum(-1)


def tanh_gaussian_sample(loc: torch.Tensor, std: torch.Tensor, noise: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised sample a = tanh(u), u = loc + std * noise, and its log-density (u is never clipped).

    ``noise`` (standard normal, loc's shape) lets a caller draw from its own generator."""
    z = torch.randn_like(loc) if noise is None else noise
    u = loc + std * z
    log_prob = (-0.5 * z.pow(2) - std.log() - _LOG_SQRT_2PI - tanh_log_det_jacobian(u)).sum(-1)
    return torch.tanh(u), log_prob
