"""Network building blocks shared by policies, critics and the dynamics model."""
from __future__ import annotations

import math

import torch
from torch import nn


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Plain MLP: Linear -> activation for each hidden width, then a final Linear."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers += [nn.Linear(last, width), activation()]
        last = width
    layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """E independent linear layers applied with one batched matmul.

    Input (E, B, in) -> output (E, B, out). Weights are (E, in, out) so that
    member k is exactly ``x[k] @ weight[k] + bias[k]``.
    """

    def __init__(self, n_members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n_members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """``members`` (optional, (M,) long) evaluates only those members: x is then (M, B, in)."""
        weight, bias = (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        # bmm + in-place bias is ~25 % faster than baddbmm on CPU (baddbmm's beta=1 path); same result.
        return torch.bmm(x, weight).add_(bias)


class EnsembleMLP(nn.Module):
    """E MLPs of identical shape, evaluated together. Input (E, B, in) or (B, in)."""

    def __init__(self, n_members: int, in_dim: int, hidden: tuple[int, ...], out_dim: int,
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.n_members = n_members
        dims = (in_dim, *hidden)
        self.hidden = nn.ModuleList(EnsembleLinear(n_members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = EnsembleLinear(n_members, dims[-1], out_dim)
        self.act = activation()

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """``members`` (optional, (M,) long) evaluates only those members: x is (M, B, in) or (B, in)."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n_members if members is None else len(members), -1, -1)
        for layer in self.hidden:
            x = self.act(layer(x, members))
        return self.out(x, members)


def adam(params, lr: float, device: torch.device, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (coupled L2 ``weight_decay``) with the fused kernel where torch has one (CPU, CUDA): fewer passes
    over the parameters, and its step counters stay on the device (no per-step host read on a GPU)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- (1 - tau) target + tau source."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)
