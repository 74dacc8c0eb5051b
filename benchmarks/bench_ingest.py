"""Benchmark: the ingest stage on a 1,000,000-transition D4RL-layout file (obs 11, act 3).

    python benchmarks/bench_ingest.py [--transitions N] [--no-next-observations]

Writes the file to a temporary directory, then runs `stages/ingest.py` there as a child
process with the file as both the expert source and the suboptimal source (so 2N
transitions are read, checked, hashed and written), and prints wall seconds and the
child's peak resident memory. Targets: < 20 s and < 2 GiB.
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

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS, TARGET_GIB = 20.0, 2.0


def write_file(path: Path, n: int, next_observations: bool, seed: int = 0) -> int:
    """Hopper-shaped random data: 1000-step episodes, a third of them cut short by termination."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < n:
        lengths.append(int(rng.integers(50, 1000)) if rng.random() < 1 / 3 else 1000)
    lengths[-1] -= sum(lengths) - n
    ends = np.cumsum(lengths) - 1
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    early = np.array(lengths) < 1000
    terminals[ends[early]] = True
    timeouts[ends[~early]] = True
    observations = rng.standard_normal((n + 1, 11), dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", data=observations[:-1])
        if next_observations:
            f.create_dataset("next_observations", data=observations[1:])
        f.create_dataset("actions", data=rng.uniform(-1, 1, (n, 3)).astype(np.float32))
        f.create_dataset("rewards", data=rng.standard_normal(n, dtype=np.float32))
        f.create_dataset("terminals", data=terminals)
        f.create_dataset("timeouts", data=timeouts)
    return len(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--no-next-observations", action="store_true", help="v2 layout without next_observations")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        path = work / "big.hdf5"
        start = time.time()
        episodes = write_file(path, args.transitions, not args.no_next_observations)
        print(f"wrote {path.name}: {args.transitions:,} transitions, {episodes} episodes, "
              f"{path.stat().st_size / 2**20:.0f} MiB in {time.time() - start:.1f}s")

        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["env"]["id"] = "Hopper-v5"
        params["data"]["expert"].update(source=f"d4rl:{path}", n_trajectories=5, selection="random")
        params["data"]["suboptimal"]["sources"] = [f"d4rl:{path}"]
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        start = time.time()
        done = subprocess.run([sys.executable, str(REPO / "stages" / "ingest.py")], cwd=work, env=env)
        seconds = time.time() - start
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
        if done.returncode != 0:
            sys.exit(f"ingest failed with exit code {done.returncode}")
        print(f"ingest (whole stage process, {2 * args.transitions:,} transitions read): {seconds:.1f} s, "
              f"peak memory {peak_gib:.2f} GiB  (targets < {TARGET_SECONDS:.0f} s, < {TARGET_GIB:.0f} GiB: "
              f"{'OK' if seconds < TARGET_SECONDS and peak_gib < TARGET_GIB else 'MISSED'})")


if __name__ == "__main__":
    main()
