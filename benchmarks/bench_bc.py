"""BC update throughput and FLOP efficiency at batch 256 (HetStat faithful loss and the MLP baseline).

    python benchmarks/bench_bc.py [--threads N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from flops import matmul_peak_flops, time_per_call  # noqa: E402

from pipeline.bc import bc_loss
from pipeline.policies import HetStatPolicy, TanhGaussianMLP


def hetstat_flops(obs_dim: int, act_dim: int, hidden: int, bottleneck: int, features: int, batch: int) -> float:
    """Matmul FLOPs of one faithful-loss update (forward x3: forward, input and weight grads)."""
    torso = obs_dim * hidden + hidden * hidden + hidden * bottleneck
    feat = bottleneck * features // 2
    loc = features * act_dim
    var = features * act_dim * features          # one (B, F) @ (F, d*F) product
    return 3 * 2 * batch * (torso + feat + loc + var)


def mlp_flops(obs_dim: int, act_dim: int, hidden: int, layers: int, batch: int) -> float:
    return 3 * 2 * batch * (obs_dim * hidden + (layers - 1) * hidden * hidden + hidden * 2 * act_dim)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    obs_dim, act_dim, batch = 11, 3, args.batch
    obs, act = torch.randn(batch, obs_dim), torch.rand(batch, act_dim) * 2 - 1
    peak = matmul_peak_flops()
    print(f"threads {args.threads}; float32 1024^3 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    for name, policy, loss, flops in [
        ("hetstat faithful", HetStatPolicy(obs_dim, act_dim), "faithful", hetstat_flops(obs_dim, act_dim, 256, 12, 256, batch)),
        ("mlp baseline nll", TanhGaussianMLP(obs_dim, act_dim, (256,) * 3), "nll", mlp_flops(obs_dim, act_dim, 256, 3, batch)),
    ]:
        opt = torch.optim.Adam(policy.parameters(), lr=1e-3, weight_decay=1e-4)

        def update() -> None:
            l = bc_loss(policy, obs, act, loss)
            opt.zero_grad(set_to_none=True)
            l.backward()
            opt.step()
        t = time_per_call(update, repeats=100)
        print(f"{name:18s} batch {batch}: {1 / t:7.1f} updates/s, {flops / t / 1e9:6.1f} GFLOP/s model matmuls, "
              f"efficiency {100 * flops / t / peak:5.1f} % of peak")


if __name__ == "__main__":
    main()
