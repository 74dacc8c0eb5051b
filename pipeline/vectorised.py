"""Several seeds of one network as one vectorised model.

`SeedStack` holds S copies of a module with their parameters stacked along a leading seed
dimension and evaluates all of them in one call with ``torch.func.vmap`` over
``functional_call``: every matmul becomes one batched matmul over the seeds, the way
`EnsembleLinear` batches the dynamics members. The copies stay independent: each has its
own initialisation, and since a loss summed over seeds gives each slice exactly its own
seed's gradient, and Adam is elementwise, one optimiser over the stacked tensors updates
every seed as its own optimiser would.

Randomness never happens inside the vmapped call: the caller draws indices and noise from
one `torch.Generator` per seed (`SeedRNG`), so seed k inside a batch sees the same stream as
seed k trained alone.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class SeedStack(nn.Module):
    """S independent copies of ``modules[0]``'s architecture: ``stack(x)`` maps (S, B, ...) -> (S, B, ...)."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.n_seeds = len(modules)
        params, buffers = stack_module_state(modules)
        # parameter names contain dots; ParameterDict keys may not, so keep a name map
        self._names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in self._names])
        self._buffer_names = list(buffers)
        for i, name in enumerate(self._buffer_names):
            self.register_buffer(f"_b{i}", buffers[name].clone(), persistent=True)
        self.template = [copy.deepcopy(modules[0]).to("meta")]   # a list: not a registered submodule

    def params(self, detach: bool = False) -> dict[str, torch.Tensor]:
        return {n: (p.detach() if detach else p) for n, p in zip(self._names, self.stacked)}

    def buffers_dict(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, f"_b{i}") for i, n in enumerate(self._buffer_names)}

    def call(self, method: str, *args: torch.Tensor, detach: bool = False, shared: tuple[bool, ...] = ()) -> Any:
        """``template.<method>(*args)`` for every seed. ``args`` are (S, ...) unless ``shared[i]`` (same for all)."""
        bound = Method(self.template[0], method)

        def one(p: dict, b: dict, *xs: torch.Tensor) -> Any:
            return functional_call(bound, (prefixed(p), prefixed(b)), xs)
        in_dims = (0, 0, *[None if (i < len(shared) and shared[i]) else 0 for i in range(len(args))])
        return vmap(one, in_dims=in_dims)(self.params(detach), self.buffers_dict(), *args)

    def forward(self, *args: torch.Tensor) -> Any:
        return self.call("forward", *args)

    def member_call(self, k: int, method: str, *args: torch.Tensor) -> Any:
        """``template.<method>(*args)`` with seed k's (detached) parameters only: args are plain (B, ...)."""
        params = {n: p[k].detach() for n, p in zip(self._names, self.stacked)}
        buffers = {n: b[k] for n, b in self.buffers_dict().items()}
        return functional_call(Method(self.template[0], method), (prefixed(params), prefixed(buffers)), args)

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Seed k's parameters and buffers as the plain module's state dict."""
        state = {n: p[k].detach().clone() for n, p in zip(self._names, self.stacked)}
        state.update({n: b[k].clone() for n, b in self.buffers_dict().items()})
        return state

    def member(self, k: int, module: nn.Module) -> nn.Module:
        """Load seed k into ``module`` (a plain copy of the architecture) and return it."""
        module.load_state_dict(self.member_state_dict(k), strict=False)
        return module


class Method(nn.Module):
    """Makes ``functional_call`` run ``module.<name>`` (it always calls forward); names gain a "module." prefix."""

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        self.module, self.fn = module, getattr(type(module), name)

    def forward(self, *xs: torch.Tensor) -> Any:
        return self.fn(self.module, *xs)


def prefixed(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in params.items()}


class SeedRNG:
    """One torch.Generator per seed, on the device; draws are stacked to (S, ...)."""

    def __init__(self, seeds: list[int], device: torch.device):
        self.seeds, self.n, self.device = list(seeds), len(seeds), device
        self.gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        # host-side streams that seed code drawing from torch's global RNG, without a device sync
        self.cpu_gens = [torch.Generator().manual_seed(10_007 * int(s) + 1) for s in seeds]

    def randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([torch.randint(0, high, shape, generator=g, device=self.device) for g in self.gens])

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.gens])

    def state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.gens + self.cpu_gens]

    def load_state(self, states: list[torch.Tensor]) -> None:
        for g, s in zip(self.gens + self.cpu_gens, states):
            g.set_state(s.cpu())
