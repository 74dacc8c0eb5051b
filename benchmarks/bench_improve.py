"""Speed of offline policy improvement (issue 6). Prints, does not assert.

  python benchmarks/bench_improve.py [--threads N] [--device cpu] [--env hopper]

HalfCheetah sizes (obs 17, act 6; the default task) or Hopper's (obs 11, act 3) and termination,
the default networks (HetStat actor and reference, 256x256 twin critic and value, 7-member 4x200
dynamics ensemble), batch 256:
1. float32 1024^3 matmul rate in this process (the reference "peak").
2. AWR update and RAMBO policy update: updates/s and FLOP efficiency = model matmul FLOP/s
   (forward + backward, counted by torch's FlopCounterMode) / the 1024^3 rate.
3. A model rollout under the policy: 5,000 starts (the default) and 50,000 (the references)
   x horizon 5, with the coherent reward of every model transition, in seconds.
4. One adversarial model step (batch 256, horizon 5).
Rates are best-of-several windows, so the ratio is fair on a loaded machine.
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
from pipeline.improvement import Bounds, Improver  # noqa: E402
from pipeline.policies import HetStatPolicy  # noqa: E402
from pipeline.termination import make_termination_fn  # noqa: E402

ENVS = {"halfcheetah": ("HalfCheetah-v5", 17, 6), "hopper": ("Hopper-v5", 11, 3)}   # (id, obs, act)
BATCH = 256


def best_seconds(fn: Callable[[], object], reps: int, windows: int = 3) -> float:
    """Best seconds per call over ``windows`` timed windows of ``reps`` calls (after warm-up)."""
    fn()
    best = float("inf")
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def matmul_flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--env", choices=sorted(ENVS), default="halfcheetah")
    args = parser.parse_args()
    env_id, obs_dim, act_dim = ENVS[args.env]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    peak = matmul_peak_flops(device=device)
    print(f"threads {args.threads}, device {device}; float32 1024^3 matmul: {peak / 1e9:.1f} GFLOP/s")

    cfg = ImproveConfig()
    bc = HetStatPolicy(obs_dim, act_dim).to(device)
    with torch.no_grad():
        bc.loc_weights.normal_(0, 0.3)
    dynamics = EnsembleDynamics(obs_dim, act_dim).to(device)
    termination = make_termination_fn(env_id, "auto", 100.0)
    improver = Improver(HetStatPolicy(obs_dim, act_dim), bc, cfg, Bounds(-5.0, 3.0, cfg.gamma), 1.0 / act_dim,
                        device, dynamics, termination)
    obs = torch.randn(BATCH, obs_dim, device=device) * 0.1 + torch.tensor([1.25] + [0.0] * (obs_dim - 1), device=device)
    batch = {"obs": obs, "act": torch.rand(BATCH, act_dim, device=device) * 2 - 1, "next_obs": obs + 0.01,
             "terminal": torch.zeros(BATCH, device=device),
             "is_expert": (torch.arange(BATCH, device=device) < BATCH // 2).float()}
    batch["rew"] = improver.reward(batch["obs"], batch["act"])
    rows = torch.randint(0, BATCH, (cfg.awr.actor_batch_size,), device=device)
    actor_batch = {k: v[rows] for k, v in batch.items()}

    for name, step in ((f"AWR update (actor {cfg.awr.actor_batch_size})", lambda: improver.awr_step(batch, actor_batch)),
                       ("RAMBO policy update", lambda: improver.rambo_step(batch))):
        flops = matmul_flops(step)
        seconds = best_seconds(step, reps=20)
        print(f"{name:22s} batch {BATCH}: {1 / seconds:7.1f} updates/s, {flops / 1e6:7.1f} MFLOP/update, "
              f"{flops / seconds / 1e9:6.1f} GFLOP/s, efficiency {100 * flops / seconds / peak:5.1f} % of peak")

    for starts in (cfg.rambo.rollout_starts, 50_000):
        start_obs = obs[torch.randint(0, BATCH, (starts,), device=device)]
        rollout = lambda: improver.model_rollout(start_obs, cfg.rambo.horizon)
        flops = matmul_flops(rollout)
        seconds = best_seconds(rollout, reps=1)
        print(f"rollout {starts:6d} x h{cfg.rambo.horizon}: {seconds:6.2f} s, {flops / seconds / 1e9:6.1f} GFLOP/s, "
              f"efficiency {100 * flops / seconds / peak:5.1f} % (policy sample + model + coherent reward)")

    start_obs = obs[torch.randint(0, BATCH, (cfg.rambo.adv_batch,), device=device)]
    adv = lambda: improver.adversarial_model_step(start_obs, batch, cfg.rambo.horizon)
    flops = matmul_flops(adv)
    seconds = best_seconds(adv, reps=5)
    print(f"adversarial model step (batch {cfg.rambo.adv_batch}, h{cfg.rambo.horizon}): {1000 * seconds:6.1f} ms, "
          f"efficiency {100 * flops / seconds / peak:5.1f} %; x{cfg.rambo.adv_steps} steps every "
          f"{cfg.rambo.adv_every} updates = {1000 * seconds * cfg.rambo.adv_steps / cfg.rambo.adv_every:.1f} ms/update")


if __name__ == "__main__":
    main()
