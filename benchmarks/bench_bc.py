"""BC update throughput and FLOP efficiency at batch 256, seeds as a batch dimension.

For the plain MLP baseline (nll, 3x256, as `bc.baseline_*`) and CSIL's HetStat policy (faithful
loss, 256/12/256), one `SeedFit.update` of 1, 3 and 5 batched seeds (what `fit_seeds` runs), next
to today's one-seed `fit` update (one policy, plain Adam). Printed side by side in one process:
seconds per update, wall time relative to one batched seed and to the plain fit, per-seed
updates/s, model matmul FLOP/s (counted with torch.utils.flop_counter.FlopCounterMode over one
update: forward and backward matmuls) and that rate over the float32 1024^3 matmul rate measured
in this process (`flops.matmul_peak_flops`). Timings are the best of ``--rounds`` rounds.

    python benchmarks/bench_bc.py [--threads N] [--seeds 1,3,5] [--batch 256]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from flops import matmul_peak_flops, time_per_call  # noqa: E402

from pipeline.bc import SeedFit, bc_loss, seed_streams
from pipeline.policies import HetStatPolicy, Policy, TanhGaussianMLP
from pipeline.utils import seed_everything

OBS_DIM, ACT_DIM, ROWS = 11, 3, 10_000


def matmul_flops(fn: Callable[[], None]) -> float:
    """Matmul FLOPs (mm, bmm, addmm, ...) of one call of ``fn``, forward and backward."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def best_time(fn: Callable[[], None], rounds: int, repeats: int) -> float:
    return min(time_per_call(fn, warmup=3, repeats=repeats) for _ in range(rounds))


def plain_update(make: Callable[[], Policy], loss: str, train: tuple[torch.Tensor, torch.Tensor],
                 batch: int) -> Callable[[], None]:
    """Today's one-seed `fit` step: `batch_sampler` + `bc_loss` + torch.optim.Adam."""
    seed_everything(0)
    policy = make()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3, weight_decay=1e-4)
    obs, act = train

    def update() -> None:
        idx = torch.randint(0, obs.shape[0], (batch,))
        l = bc_loss(policy, obs[idx], act[idx], loss)
        opt.zero_grad(set_to_none=True)
        l.backward()
        opt.step()
    return update


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seeds", default="1,3,5", help="comma-separated batch sizes over seeds")
    parser.add_argument("--repeats", type=int, default=30, help="updates per timing round")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (best of)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(s) for s in args.seeds.split(",")]
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(ROWS, OBS_DIM, generator=g), torch.rand(ROWS, ACT_DIM, generator=g) * 2 - 1)
    peak = matmul_peak_flops()
    print(f"threads {args.threads}; float32 1024^3 matmul peak: {peak / 1e9:.1f} GFLOP/s; batch {args.batch}")
    learners = [("mlp baseline nll", lambda: TanhGaussianMLP(OBS_DIM, ACT_DIM, (256,) * 3), "nll"),
                ("hetstat faithful", lambda: HetStatPolicy(OBS_DIM, ACT_DIM), "faithful")]
    header = (f"{'learner':18s} {'seeds':>10s} {'ms/update':>9s} {'x 1 seed':>8s} {'x plain':>7s} "
              f"{'upd/s/seed':>10s} {'GFLOP/s':>8s} {'eff %':>6s}")
    print(header)
    print("-" * len(header))
    for name, make, loss in learners:
        rows = []
        update = plain_update(make, loss, train, args.batch)
        rows.append(("1 (plain)", 1, matmul_flops(update), best_time(update, args.rounds, args.repeats)))
        for n in counts:
            policies, rng = seed_streams(make, list(range(n)), torch.device("cpu"))
            fitter = SeedFit(policies, rng, train, lr=1e-3, weight_decay=1e-4, loss=loss, batch_size=args.batch)
            rows.append((f"{n} batched", n, matmul_flops(fitter.update),
                         best_time(fitter.update, args.rounds, args.repeats)))
        plain_t = rows[0][3]
        one_t = next((t for label, n, _, t in rows[1:] if n == 1), plain_t)
        for label, n, flops, t in rows:
            print(f"{name:18s} {label:>10s} {1e3 * t:9.2f} {t / one_t:8.2f} {t / plain_t:7.2f} {n / t:10.1f} "
                  f"{flops / t / 1e9:8.1f} {100 * flops / t / peak:6.1f}")
    print("x 1 seed: wall time of one update over that of 1 batched seed; x plain: over today's one-seed fit "
          "update; upd/s/seed: updates per second of each seed; eff %: model matmul FLOP/s over the matmul peak")


if __name__ == "__main__":
    main()
