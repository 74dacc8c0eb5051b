"""Stage improve@<algo>: offline policy improvement on the coherent reward, every seed of
`improve.seeds` at once (one vectorised model, see pipeline/improvement.py).

Reads the demonstrations' training rows (the split BC uses: held-out rows stay held out for every
method), the other data, their coherent rewards from the reward stage (data/reward/rewards.h5), the
BC stage-1 actor awr starts from and the stage-2 policy (the KL reference csil and rambo also start
from, as CSIL's code does; the reward of model transitions); rambo also data/dynamics/model.pt and
the termination rule stored with it.
Writes data/improve/<algo>/<algo>-<seed>/{policy.pt, metrics.json, curve.tsv} per seed. A killed
run resumes from data/.resume/improve-<algo>.pt (outside every tracked output).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from pipeline.bc import expert_split_rows
from pipeline.config import load_params
from pipeline.datasets import EpisodeDataset
from pipeline.errors import ArtefactError
from pipeline.improvement import ALGORITHMS, Bounds, Learner, SeedBuffers, demo_mse, train
from pipeline.policies import load_policy, save_policy
from pipeline.stage import run_stage
from pipeline.utils import atomic_json, atomic_write, resolve_device

INPUTS = ["data/ingested/expert.h5", "data/ingested/suboptimal.h5", "data/reward/rewards.h5",
          "data/bc/policy.pt", "data/bc/stage1.pt"]
log = logging.getLogger("improve")


def run_dir(algo: str, seed: int) -> Path:
    return Path("data/improve") / algo / f"{algo}-{seed}"


def fingerprint(algo: str, sections: dict, inputs: list[str]) -> str:
    h = hashlib.sha256(json.dumps([algo, sections], sort_keys=True, default=str).encode())
    for path in inputs:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def read_rewards(path: Path, n_expert: int, n_other: int) -> tuple[np.ndarray, np.ndarray, float]:
    if not path.exists():
        raise ArtefactError(f"{path}: coherent rewards not found; run `dvc repro reward`")
    with h5py.File(path, "r") as f:
        r_exp, r_other, alpha = f["expert"][:], f["suboptimal"][:], float(f.attrs["alpha"])
    if (len(r_exp), len(r_other)) != (n_expert, n_other):
        raise ArtefactError(f"{path}: {len(r_exp)} / {len(r_other)} rewards for {n_expert} / {n_other} "
                            f"ingested transitions; run `dvc repro reward`")
    return r_exp, r_other, alpha


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", required=True, help=f"one of: {', '.join(ALGORITHMS)} (improve.algos)")
    args = parser.parse_args()
    params = load_params()
    if args.algo not in params.improve.algos:
        raise ArtefactError(f"--algo {args.algo}: not in params.yaml improve.algos {params.improve.algos}")
    cfg = params.improve
    device = resolve_device(params.device)
    seeds = [int(s) for s in cfg.seeds]

    expert = EpisodeDataset.load("data/ingested/expert.h5")
    other = EpisodeDataset.load("data/ingested/suboptimal.h5")
    r_exp, r_other, alpha = read_rewards(Path("data/reward/rewards.h5"), expert.n_transitions, other.n_transitions)
    bc = load_policy("data/bc/policy.pt", device)
    actor = bc if ALGORITHMS[args.algo].actor_start == "reference" else load_policy("data/bc/stage1.pt", device)
    if (bc.obs_dim, bc.act_dim) != (expert.obs_dim, expert.act_dim):
        raise ArtefactError("data/bc/policy.pt does not match data/ingested dims; rerun `dvc repro bc`")
    train_rows, _ = expert_split_rows(expert, params.bc.val_fraction, params.seed)

    def tensors(d: EpisodeDataset, rew: np.ndarray, rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        data = d.to_torch(device)
        data.pop("rew_env", None)
        data["rew"] = torch.as_tensor(rew, device=device).clamp(min=params.reward.r_min)
        return {k: v[torch.as_tensor(rows, device=device)] for k, v in data.items()} if rows is not None else data

    demos, rest = tensors(expert, r_exp, train_rows), tensors(other, r_other)
    bounds = Bounds(r_min=params.reward.r_min, r_max=float(demos["rew"].max()), gamma=cfg.gamma)
    dynamics, termination_fn, inputs = None, None, list(INPUTS)
    if ALGORITHMS[args.algo].uses_model:
        from pipeline.dynamics import load_dynamics
        from pipeline.termination import make_termination_fn
        dynamics = load_dynamics("data/dynamics/model.pt", device)
        rule = dynamics.termination   # the rule the model was trained and checked with
        if rule is None:
            raise ArtefactError("data/dynamics/model.pt: no termination settings stored; run `dvc repro dynamics`")
        termination_fn = make_termination_fn(rule["env_id"], rule["mode"], rule["obs_bound"])
        inputs.append("data/dynamics/model.pt")

    learner = Learner(args.algo, actor, bc, cfg, bounds, alpha, seeds, device, dynamics, termination_fn)
    buffers = SeedBuffers(demos, rest, bc, learner.rng)
    demo_probe = demos["obs"][:10_000], demos["act"][:10_000]
    start_mse = float(demo_mse(learner, *demo_probe)[0])
    evaluate = None
    if cfg.eval_every:
        from pipeline.evaluation import evaluate_policy, tuning_seed
        evaluate = lambda policy: evaluate_policy(policy, params.env.id, cfg.eval_episodes, seed=tuning_seed(),
                                                  n_envs=min(cfg.eval_episodes, params.evaluate.n_envs),
                                                  device=device)["return_mean"]
    resume = Path("data/.resume") / f"improve-{args.algo}.pt"
    resume.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    curves = train(learner, buffers, resume_path=resume, evaluate=evaluate,
                   fingerprint=fingerprint(args.algo, {"improve": asdict(cfg), "reward": asdict(params.reward),
                                                       "val_fraction": params.bc.val_fraction, "seed": params.seed},
                                           inputs))
    wall = time.time() - start
    for k, seed in enumerate(seeds):
        out, curve = run_dir(args.algo, seed), curves[k]
        last = curve[-1] if curve else {}
        metrics = {"algo": args.algo, "seed": seed, "steps": cfg.steps, "critic_pretrain_steps": cfg.critic_pretrain_steps,
                   "demo_transitions": int(len(train_rows)), "r_min": bounds.r_min, "r_max": bounds.r_max,
                   "alpha": alpha, "start_demo_mse": round(start_mse, 5),
                   **{f"final_{key}": v for key, v in last.items() if key not in ("step", "phase")}}
        save_policy(learner.member_actor(k), out / "policy.pt", algo=args.algo, seed=seed, steps=cfg.steps)
        atomic_write(out / "curve.tsv", lambda p: pd.DataFrame(curve).to_csv(p, sep="\t", index=False))
        atomic_json(metrics, out / "metrics.json")
    resume.unlink(missing_ok=True)
    log.info("%s: %d seeds x (%d + %d) steps in %.0fs (%.1f updates/s per seed)", args.algo, len(seeds),
             cfg.critic_pretrain_steps, cfg.steps, wall, (cfg.critic_pretrain_steps + cfg.steps) / max(wall, 1e-9))


if __name__ == "__main__":
    run_stage(main)
