"""Shared benchmark helpers: the float32 matmul peak measured in this process."""
from __future__ import annotations

import time

import torch


def matmul_peak_flops(n: int = 1024, repeats: int = 20, device: torch.device | str = "cpu") -> float:
    """FLOP/s of a float32 n^3 matmul on this process's threads (best of ``repeats``)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def time_per_call(fn, warmup: int = 5, repeats: int = 50) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats
