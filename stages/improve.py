"""Stage improve@<algo>-<seed>: offline policy improvement on the coherent reward.

The actor starts from BC stage 1 (data/bc/stage1.pt); the reward and the KL reference
come from BC stage 2 (data/bc/policy.pt); rambo also uses data/dynamics/model.pt.
Writes data/improve/<algo>-<seed>/policy.pt, metrics.json, curve.tsv. A killed run
resumes from data/improve/<algo>-<seed>/resume.pt (removed when the run completes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from pipeline.config import load_params
from pipeline.datasets import EpisodeDataset
from pipeline.improvement import Bounds, Improver, TransitionBuffer, demo_mse, demo_subset, train
from pipeline.policies import load_policy, save_policy
from pipeline.reward import coherent_reward_batched, resolve_alpha
from pipeline.stage import ArtefactError, run_stage
from pipeline.utils import atomic_json, atomic_write, resolve_device, seed_everything

log = logging.getLogger("improve")
INPUTS = ["data/ingested/expert.h5", "data/ingested/suboptimal.h5", "data/bc/policy.pt", "data/bc/stage1.pt"]


def fingerprint(algo: str, seed: int, params_section: dict, inputs: list[str]) -> str:
    h = hashlib.sha256(json.dumps([algo, seed, params_section], sort_keys=True, default=str).encode())
    for path in inputs:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--algo", required=True, choices=["awr", "rambo"])
    parser.add_argument("--seed", required=True, type=int)
    args = parser.parse_args()
    params = load_params()
    cfg = params.improve
    device = resolve_device(params.device)
    seed_everything(args.seed)
    out = Path("data/improve") / f"{args.algo}-{args.seed}"

    expert = EpisodeDataset.load("data/ingested/expert.h5")
    suboptimal = EpisodeDataset.load("data/ingested/suboptimal.h5")
    bc = load_policy("data/bc/policy.pt", device)
    actor = load_policy("data/bc/stage1.pt", device)
    if (bc.obs_dim, bc.act_dim) != (expert.obs_dim, expert.act_dim):
        raise ArtefactError("data/bc/policy.pt does not match data/ingested dims; rerun `dvc repro bc`")
    alpha = resolve_alpha(params.reward.alpha, expert.act_dim)

    def buffer(d: EpisodeDataset) -> TransitionBuffer:
        data = d.to_torch(device)
        data["rew"] = coherent_reward_batched(bc, data["obs"], data["act"], alpha).clamp(min=params.reward.r_min)
        data.pop("rew_env", None)
        return TransitionBuffer(data)

    expert_buf, sub_buf = buffer(expert), buffer(suboptimal)
    bounds = Bounds(r_min=params.reward.r_min, r_max=float(expert_buf.data["rew"].max()), gamma=cfg.gamma)
    dynamics, termination_fn, inputs = None, None, list(INPUTS)
    if args.algo == "rambo":
        from pipeline.dynamics import load_dynamics
        from pipeline.termination import make_termination_fn
        dynamics = load_dynamics("data/dynamics/model.pt", device)
        termination_fn = make_termination_fn(params.env.id, params.env.termination, params.env.obs_bound)
        inputs.append("data/dynamics/model.pt")
    demos = demo_subset(expert_buf)
    reference_mse = {"start_demo_mse": float(demo_mse(actor, *demos)), "csil_bc_demo_mse": float(demo_mse(bc, *demos))}
    improver = Improver(actor, bc, cfg, bounds, alpha, device, dynamics, termination_fn)
    if cfg.compile:
        improver.critic = torch.compile(improver.critic)

    evaluate = None
    if cfg.eval_every:
        from pipeline.evaluation import evaluate_policy
        evaluate = lambda policy: evaluate_policy(policy, params.env.id, cfg.eval_episodes, seed=12345,
                                                  n_envs=min(cfg.eval_episodes, params.evaluate.n_envs),
                                                  device=device)["return_mean"]
    start = time.time()
    curve = train(improver, args.algo, expert_buf, sub_buf, sub_buf.data["obs"], resume_path=out / "resume.pt",
                  fingerprint=fingerprint(args.algo, args.seed, asdict(cfg) | {"reward": asdict(params.reward)},
                                          inputs),
                  evaluate=evaluate, eval_every=cfg.eval_every)
    wall = time.time() - start
    last = curve[-1] if curve else {}
    metrics = {"algo": args.algo, "seed": args.seed, "steps": cfg.steps, "wall_s": round(wall, 1),
               "r_min": bounds.r_min, "r_max": bounds.r_max, "alpha": alpha, **reference_mse,
               **{f"final_{k}": v for k, v in last.items() if k != "step"}}
    save_policy(improver.actor, out / "policy.pt", algo=args.algo, seed=args.seed, steps=cfg.steps)
    atomic_write(out / "curve.tsv", lambda p: pd.DataFrame(curve).to_csv(p, sep="\t", index=False))
    atomic_json(metrics, out / "metrics.json")
    (out / "resume.pt").unlink(missing_ok=True)
    log.info("%s-%d: %d steps in %.0fs; last row %s", args.algo, args.seed, cfg.steps, wall, last)


if __name__ == "__main__":
    run_stage(main)
