"""Speed and memory of the dynamics ensemble (issue 5). Prints, does not assert.

  python benchmarks/bench_dynamics.py [--threads N] [--skip-memory] [--mem-obs-dim 11]

1. float32 1024^3 matmul rate in this process (the reference "peak").
2. Training step at batch 256 x 7 members (Hopper sizes 11 + 3 -> 11): member-samples/s and
   FLOP efficiency = model matmul FLOP/s (forward + backward) / the 1024^3 rate.
   Target >= 40 %.
3. Rollout of 50,000 start states x horizon 5 with a 256x256 TanhGaussianMLP policy
   sampling in the loop and the Hopper termination rule. Target < 3 s.
4. Peak resident memory of the dynamics stage on a synthetic 1M-transition dataset,
   run for a few hundred steps in a subprocess. Target < 4 GiB.

Both rates are best-of-several windows measured under the same conditions, so the ratio
is fair on a loaded machine; absolute numbers drop when other jobs share the cores.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.datasets import EpisodeDataset  # noqa: E402
from pipeline.dynamics import EnsembleDynamics, make_optimizer, rollout, train_step  # noqa: E402
from pipeline.policies import TanhGaussianMLP  # noqa: E402
from pipeline.termination import make_termination_fn  # noqa: E402

OBS_DIM, ACT_DIM = 11, 3


def best_rate(fn: Callable[[], object], work: float, reps: int, windows: int = 5) -> float:
    """Best work/second over ``windows`` timed windows of ``reps`` calls (after warm-up)."""
    for _ in range(2):
        fn()
    best = 0.0
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = max(best, work * reps / (time.perf_counter() - t))
    return best


def matmul_peak_fn() -> tuple[Callable[[], object], float]:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return (lambda: a @ b), 2.0 * 1024 ** 3


def training_step_flops(model: EnsembleDynamics, batch: int) -> float:
    """Matmul FLOPs of one step: forward, weight gradients, input gradients (not for layer 1)."""
    total = 0.0
    for i, layer in enumerate(model.layers):
        _, d_in, d_out = layer.weight.shape
        per = 2.0 * model.n_members * batch * d_in * d_out
        total += per * (3 if i else 2)
    return total


def training_step_fn(batch: int = 256, n_data: int = 100_000) -> tuple[Callable[[], object], float, int]:
    model = EnsembleDynamics(OBS_DIM, ACT_DIM)
    opt = make_optimizer(model, 1e-3)
    x, y = torch.randn(n_data, OBS_DIM + ACT_DIM), torch.randn(n_data, OBS_DIM)
    idx = torch.randint(0, n_data, (50, model.n_members, batch))
    counter = iter(range(10 ** 9))

    def step() -> None:
        i = idx[next(counter) % len(idx)]
        train_step(model, opt, x[i], y[i])
    return step, training_step_flops(model, batch), model.n_members * batch


def bench_training(rounds: int = 6) -> dict:
    """Interleave the 1024^3 matmul and the training step so both see the same machine load."""
    peak_fn, peak_work = matmul_peak_fn()
    step_fn, step_flops, samples = training_step_fn()
    peaks, steps = [], []
    for _ in range(rounds):
        peaks.append(best_rate(peak_fn, peak_work, reps=10, windows=1))
        steps.append(best_rate(step_fn, 1.0, reps=20, windows=1))
    ratios = [s * step_flops / p for s, p in zip(steps, peaks)]
    return {"peak": max(peaks), "steps_per_s": max(steps), "flop_per_step": step_flops,
            "member_samples_per_s": max(steps) * samples, "flop_per_s": max(steps) * step_flops,
            "efficiency_best": max(steps) * step_flops / max(peaks), "efficiency_rounds": ratios}


def bench_rollout(n_starts: int = 50_000, horizon: int = 5) -> dict:
    model = EnsembleDynamics(OBS_DIM, ACT_DIM).eval()
    policy = TanhGaussianMLP(OBS_DIM, ACT_DIM, hidden=(256, 256)).eval()
    term = make_termination_fn("Hopper-v5", "auto", 100.0)
    # a healthy-looking Hopper start state, small noise around it
    start = torch.zeros(n_starts, OBS_DIM) + 0.05 * torch.randn(n_starts, OBS_DIM)
    start[:, 0] += 1.25
    policy_act = lambda o: policy.sample(o)[0]
    rollout(model, policy_act, start[:1000], horizon, term)      # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        out = rollout(model, policy_act, start, horizon, term)
        times.append(time.perf_counter() - t)
    return {"seconds": min(times), "seconds_all": times, "transitions": int(out["obs"].shape[0])}


def synthetic_dataset(n: int, obs_dim: int, act_dim: int, episode_len: int = 1000, seed: int = 0) -> EpisodeDataset:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, obs_dim), dtype=np.float32)
    next_obs = obs + 0.1 * rng.standard_normal((n, obs_dim), dtype=np.float32)
    starts = np.arange(0, n + 1, episode_len, dtype=np.int64)
    timeouts = np.zeros(n, bool)
    timeouts[starts[1:] - 1] = True
    return EpisodeDataset(obs, rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                          rng.standard_normal(n, dtype=np.float32), next_obs, np.zeros(n, bool), timeouts,
                          starts, meta={"synthetic": True})


def bench_stage_memory(n: int, obs_dim: int, steps: int, threads: int | None) -> dict:
    """Run stages/dynamics.py on a synthetic dataset in a scratch dir; peak RSS of that child."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data/ingested").mkdir(parents=True)
        data = synthetic_dataset(n, obs_dim, ACT_DIM)
        data.select_episodes([0]).save(tmp / "data/ingested/expert.h5")
        data.save(tmp / "data/ingested/suboptimal.h5")
        del data
        env_id = "Hopper-v5" if obs_dim == 11 else "Ant-v5" if obs_dim == 105 else "Unknown-v0"
        mode = "auto" if env_id != "Unknown-v0" else "bounds"
        (tmp / "params.yaml").write_text(
            f"device: cpu\nenv:\n  id: {env_id}\n  termination: {mode}\n"
            f"dynamics:\n  max_epochs: 1\n  max_epoch_steps: {steps}\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "stages/dynamics.py")], cwd=tmp, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"stage failed:\n{proc.stderr[-2000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_gib": peak_kib / 2 ** 20, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--mem-transitions", type=int, default=1_000_000)
    ap.add_argument("--mem-obs-dim", type=int, default=OBS_DIM, help="11 = Hopper, 105 = Ant-v5")
    ap.add_argument("--mem-steps", type=int, default=300)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}")

    tr = bench_training()
    print(f"float32 1024^3 matmul: {tr['peak'] / 1e9:.1f} GFLOP/s (best of 6 rounds)")
    print(f"training step, batch 256 x 7 members: {1e3 / tr['steps_per_s']:.1f} ms/step, "
          f"{tr['member_samples_per_s']:,.0f} member-samples/s, "
          f"{tr['flop_per_s'] / 1e9:.1f} GFLOP/s matmul ({tr['flop_per_step'] / 1e9:.2f} GFLOP/step)")
    rounds = sorted(tr["efficiency_rounds"])
    print(f"FLOP efficiency: {100 * tr['efficiency_best']:.0f} % (best step rate / best matmul rate); per round "
          f"(step rate / matmul rate measured next to it): median {100 * rounds[len(rounds) // 2]:.0f} %, "
          f"range {100 * rounds[0]:.0f}-{100 * rounds[-1]:.0f} %  [target >= 40 %]")
    ro = bench_rollout()
    print(f"rollout 50,000 starts x horizon 5 with a 256x256 policy: {ro['seconds']:.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in ro['seconds_all'])}; {ro['transitions']:,} alive transitions; "
          f"untrained model)  [target < 3 s]")
    if not args.skip_memory:
        mem = bench_stage_memory(args.mem_transitions, args.mem_obs_dim, args.mem_steps, args.threads)
        print(f"stage on {args.mem_transitions:,} synthetic transitions (obs dim {args.mem_obs_dim}, "
              f"{args.mem_steps} steps): peak RSS {mem['peak_gib']:.2f} GiB, {mem['wall_s']:.0f} s  [target < 4 GiB]")


if __name__ == "__main__":
    main()
