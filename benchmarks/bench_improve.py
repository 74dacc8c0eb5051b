"""Speed of offline policy improvement with seeds as a batch dimension. Prints, does not assert.

  python benchmarks/bench_improve.py [--threads N] [--device cpu|cuda] [--env halfcheetah|hopper] [--seeds 1 3 5]

HalfCheetah sizes (obs 17, act 6; the default task) or Hopper's, the default networks (HetStat actor and
reference, 256x256 LayerNorm twin critics, AWR's value net, the 7-member 4x200 dynamics ensemble), batch 256.
In one process, side by side for 1, 3 and 5 batched seeds:
1. float32 1024^3 matmul rate (the reference "peak"), measured in this process.
2. For every learner (csil, awr, rambo's policy update): per-seed updates/s, wall time of one batched
   update relative to one seed, and FLOP efficiency = model matmul FLOP/s (forward + backward, counted by
   torch's FlopCounterMode) / the 1024^3 rate.
3. rambo's model rollout (5,000 starts x horizon 5 per seed) and one adversarial model step per seed.
Rates are best-of-several windows, so ratios are fair on a loaded machine. On a GPU the same figures
are printed for the GPU (synchronised timings).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from flops import matmul_peak_flops  # noqa: E402

from pipeline.config import ImproveConfig  # noqa: E402
from pipeline.dynamics import EnsembleDynamics  # noqa: E402
from pipeline.improvement import (ALGORITHMS, Bounds, Learner, SeedBuffers, adversarial_model_phase,  # noqa: E402
                                  model_rollouts, real_and_model_batch)
from pipeline.policies import HetStatPolicy  # noqa: E402
from pipeline.termination import make_termination_fn  # noqa: E402

ENVS = {"halfcheetah": ("HalfCheetah-v5", 17, 6), "hopper": ("Hopper-v5", 11, 3)}   # (id, obs, act)
BATCH = 256


def best_seconds(fn: Callable[[], object], reps: int, windows: int = 3, device: torch.device | None = None) -> float:
    """Best seconds per call over ``windows`` timed windows of ``reps`` calls (after warm-up)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device is not None and device.type == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def matmul_flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def setup(algo: str, n_seeds: int, obs_dim: int, act_dim: int, env_id: str, device: torch.device):
    cfg = ImproveConfig()
    torch.manual_seed(0)
    bc = HetStatPolicy(obs_dim, act_dim).to(device)
    with torch.no_grad():
        bc.loc_weights.normal_(0, 0.3)
    dynamics = EnsembleDynamics(obs_dim, act_dim).to(device) if ALGORITHMS[algo].uses_model else None
    learner = Learner(algo, HetStatPolicy(obs_dim, act_dim), bc, cfg, Bounds(-5.0, 3.0, cfg.section(algo).gamma), 1.0 / act_dim,
                      list(range(n_seeds)), device, dynamics, make_termination_fn(env_id, "auto", 100.0))
    n = 20_000
    obs = torch.randn(n, obs_dim, device=device) * 0.1 + torch.tensor([1.25] + [0.0] * (obs_dim - 1), device=device)
    data = {"obs": obs, "act": torch.rand(n, act_dim, device=device) * 2 - 1, "next_obs": obs + 0.01,
            "terminal": torch.zeros(n, device=device)}
    data["rew"] = learner.reward(data["obs"], data["act"])
    return learner, SeedBuffers(data, dict(data), bc, learner.rng), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--env", choices=sorted(ENVS), default="halfcheetah")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--algos", nargs="+", default=["csil", "awr", "awr_uniform", "rambo"])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    env_id, obs_dim, act_dim = ENVS[args.env]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = matmul_peak_flops(device=device)
    print(f"{args.env}, threads {args.threads}, device {device}; float32 1024^3 matmul: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'learner':28s} {'seeds':>5s} {'updates/s/seed':>14s} {'x one seed':>10s} {'MFLOP/upd':>10s} {'eff %':>6s}")
    for algo in args.algos:
        base = None
        for n_seeds in args.seeds:
            learner, buffers, cfg = setup(algo, n_seeds, obs_dim, act_dim, env_id, device)
            if algo == "rambo":
                model_rollouts(learner, buffers.start_states(cfg.rambo.rollout_starts, cfg.rambo.rollout_demo_share))
                step = lambda: learner.spec.update(learner, real_and_model_batch(learner, buffers), True)
            elif learner.spec.awr_actor:
                step = lambda: learner.spec.update(learner, buffers.mixed(cfg.batch_size, cfg.expert_ratio),
                                                   buffers.mixed(cfg.awr.actor_batch_size, cfg.expert_ratio), True)
            else:
                step = lambda: learner.spec.update(learner, buffers.mixed(cfg.batch_size, cfg.expert_ratio), True)
            flops = matmul_flops(step)
            seconds = best_seconds(step, reps=args.reps, device=device)
            base = base or seconds
            name = f"{algo} update" if algo != "rambo" else "rambo policy update"
            print(f"{name:28s} {n_seeds:5d} {1 / seconds:14.1f} {seconds / base:10.2f} {flops / n_seeds / 1e6:10.0f} "
                  f"{100 * flops / seconds / peak:6.1f}")
            if algo == "rambo":
                starts = buffers.start_states(cfg.rambo.rollout_starts, cfg.rambo.rollout_demo_share)
                roll = lambda: model_rollouts(learner, starts)
                r_flops, r_sec = matmul_flops(roll), best_seconds(roll, reps=1, device=device)
                cfg.rambo.adv_steps = 5
                adv = lambda: adversarial_model_phase(learner, buffers)
                a_flops, a_sec = matmul_flops(adv), best_seconds(adv, reps=1, device=device)
                print(f"{'  rollout 5000 x h5 /seed':28s} {n_seeds:5d} {r_sec / n_seeds:13.2f}s {'':10s} {'':10s} "
                      f"{100 * r_flops / r_sec / peak:6.1f}")
                print(f"{'  adversarial step /seed':28s} {n_seeds:5d} {1000 * a_sec / 5 / n_seeds:12.1f}ms {'':10s} "
                      f"{'':10s} {100 * a_flops / a_sec / peak:6.1f}")


if __name__ == "__main__":
    main()
