"""Stage improve@<algo>-<seed>: offline policy improvement on the coherent reward.

Every seed of `improve.seeds` trains at once, as one vectorised model (pipeline/improvement.py).
DVC needs one stage per artefact folder data/improve/<algo>-<seed>/, so the stage of the first
seed of `improve.seeds` trains the whole batch and keeps every seed's artefacts in
data/.batch/<algo>/ (untracked, keyed by a fingerprint of the inputs, params and code); the other
seeds' stages copy theirs from there, or train the batch themselves when it is missing or stale.

Reads the demonstrations' training rows (the split BC uses: held-out rows stay held out for every
method), the other data, their coherent rewards from the reward stage (data/reward/rewards.h5) and
its policy (data/reward/policy.pt: the reward of model transitions), the BC stage-1 actor every
learner starts from (as CSIL's offline code does) and the stage-2 policy (the KL reference of csil
and rambo); rambo also data/dynamics/model.pt and the termination rule stored with it.
Writes data/improve/<algo>-<seed>/{policy.pt, metrics.json, curve.tsv}. A killed run resumes from
data/.resume/improve-<algo>.pt (outside every tracked output).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from pipeline.bc import expert_split_rows
from pipeline.config import ImproveConfig, Params, load_params
from pipeline.datasets import EpisodeDataset
from pipeline.errors import ArtefactError
from pipeline.improvement import ALGORITHMS, Bounds, Learner, SeedBuffers, demo_mse, train
from pipeline.policies import load_policy, save_policy
from pipeline.stage import run_stage
from pipeline.utils import atomic_json, atomic_write, content_hash, replace_dir, resolve_device, staging_dir

INPUTS = ["data/ingested/expert.h5", "data/ingested/suboptimal.h5", "data/reward/rewards.h5",
          "data/reward/policy.pt", "data/bc/policy.pt", "data/bc/stage1.pt"]
log = logging.getLogger("improve")


BATCH_ROOT = Path("data/.batch")     # each algo's last batched run: every seed's artefacts + its fingerprint
CODE = sorted(Path(__file__).resolve().parents[1].joinpath("pipeline").glob("*.py")) + [Path(__file__).resolve()]


def run_dir(algo: str, seed: int) -> Path:
    return Path("data/improve") / f"{algo}-{seed}"


def fingerprint(algo: str, sections: dict, inputs: list[str]) -> str:
    """Of everything a batched run's result depends on: params, input bytes, the library's code."""
    h = hashlib.sha256(json.dumps([algo, sections, torch.__version__], sort_keys=True, default=str).encode())
    for path in inputs:
        h.update(Path(path).read_bytes())
    h.update(content_hash(CODE).encode())
    return h.hexdigest()


def copy_seed(batch: Path, algo: str, seed: int) -> None:
    """data/.batch/<algo>/<algo>-<seed>/ -> data/improve/<algo>-<seed>/, atomically."""
    out = run_dir(algo, seed)
    with staging_dir(out.parent) as staging:
        shutil.copytree(batch / out.name, staging / out.name)
        replace_dir(staging / out.name, out)


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
    parser.add_argument("--seed", required=True, type=int, help="the seed whose artefacts to write (improve.seeds)")
    args = parser.parse_args()
    params = load_params()
    if args.algo not in params.improve.algos:
        raise ArtefactError(f"--algo {args.algo}: not in params.yaml improve.algos {params.improve.algos}")
    cfg = params.improve
    device = resolve_device(params.device)
    seeds = [int(s) for s in cfg.seeds]
    if args.seed not in seeds:
        raise ArtefactError(f"--seed {args.seed}: not in params.yaml improve.seeds {seeds}")
    inputs = INPUTS + (["data/dynamics/model.pt"] if ALGORITHMS[args.algo].uses_model else [])
    for path in inputs:
        if not Path(path).exists():
            raise ArtefactError(f"{path}: not found; run `dvc repro` up to this stage")
    fp = fingerprint(args.algo, {"improve": asdict(cfg), "reward": asdict(params.reward),
                                 "val_fraction": params.bc.val_fraction, "seed": params.seed, "device": str(device)},
                     inputs)
    batch = BATCH_ROOT / args.algo
    stamp = batch / "fingerprint"
    # the first seed's stage always trains (so `dvc repro -f` recomputes); the others reuse its batch
    if args.seed != seeds[0] and stamp.exists() and stamp.read_text() == fp and (batch / f"{args.algo}-{args.seed}").is_dir():
        copy_seed(batch, args.algo, args.seed)
        log.info("%s-%d: copied from the batched run of seeds %s (%s)", args.algo, args.seed, seeds, batch)
        return
    train_batch(args.algo, params, seeds, device, fp, batch)
    copy_seed(batch, args.algo, args.seed)


def train_batch(algo: str, params: Params, seeds: list[int], device: torch.device, fp: str, batch: Path) -> None:
    """Train every seed of ``algo`` as one vectorised model; write each seed's artefacts under ``batch``."""
    cfg = params.improve

    expert = EpisodeDataset.load("data/ingested/expert.h5")
    other = EpisodeDataset.load("data/ingested/suboptimal.h5")
    r_exp, r_other, alpha = read_rewards(Path("data/reward/rewards.h5"), expert.n_transitions, other.n_transitions)
    bc = load_policy("data/bc/policy.pt", device)
    actor = bc if ALGORITHMS[algo].actor_start == "reference" else load_policy("data/bc/stage1.pt", device)
    if (bc.obs_dim, bc.act_dim) != (expert.obs_dim, expert.act_dim):
        raise ArtefactError("data/bc/policy.pt does not match data/ingested dims; rerun `dvc repro bc`")
    train_rows, _ = expert_split_rows(expert, params.bc.val_fraction, params.seed)

    def tensors(d: EpisodeDataset, rew: np.ndarray, rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        data = d.to_torch(device)
        data.pop("rew_env", None)
        data["rew"] = torch.as_tensor(rew, device=device).clamp(min=params.reward.r_min)
        return {k: v[torch.as_tensor(rows, device=device)] for k, v in data.items()} if rows is not None else data

    demos, rest = tensors(expert, r_exp, train_rows), tensors(other, r_other)
    bounds = Bounds(r_min=params.reward.r_min, r_max=float(demos["rew"].max()), gamma=cfg.section(algo).gamma)
    dynamics, termination_fn = None, None
    if ALGORITHMS[algo].uses_model:
        from pipeline.dynamics import load_dynamics
        from pipeline.termination import make_termination_fn
        dynamics = load_dynamics("data/dynamics/model.pt", device)
        rule = dynamics.termination   # the rule the model was trained and checked with
        if rule is None:
            raise ArtefactError("data/dynamics/model.pt: no termination settings stored; run `dvc repro dynamics`")
        termination_fn = make_termination_fn(rule["env_id"], rule["mode"], rule["obs_bound"])

    reward_policy = load_policy("data/reward/policy.pt", device)
    learner = Learner(algo, actor, bc, cfg, bounds, alpha, seeds, device, dynamics, termination_fn, reward_policy)
    buffers = SeedBuffers(demos, rest, bc, learner.rng)
    demo_probe = demos["obs"][:10_000], demos["act"][:10_000]
    start_mse = float(demo_mse(learner, *demo_probe)[0])
    evaluate = None
    if cfg.eval_every:
        from pipeline.evaluation import evaluate_policy, tuning_seed
        evaluate = lambda policy: evaluate_policy(policy, params.env.id, cfg.eval_episodes, seed=tuning_seed(),
                                                  n_envs=min(cfg.eval_episodes, params.evaluate.n_envs),
                                                  device=device)["return_mean"]
    resume = Path("data/.resume") / f"improve-{algo}.pt"
    resume.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    curves = train(learner, buffers, resume_path=resume, evaluate=evaluate, fingerprint=fp)
    wall = time.time() - start
    with staging_dir(BATCH_ROOT) as staging:
        built = staging / algo
        for k, seed in enumerate(seeds):
            _write_seed(built / f"{algo}-{seed}", learner, k, algo, seed, cfg, curves[k], train_rows, bounds,
                        alpha, start_mse)
        (built / "fingerprint").write_text(fp)
        replace_dir(built, batch)
    resume.unlink(missing_ok=True)
    log.info("%s: %d seeds x (%d + %d) steps in %.0fs (%.1f updates/s per seed)", algo, len(seeds),
             cfg.critic_pretrain_steps, cfg.steps, wall, (cfg.critic_pretrain_steps + cfg.steps) / max(wall, 1e-9))


def _write_seed(out: Path, learner: Learner, k: int, algo: str, seed: int, cfg: ImproveConfig, curve: list[dict],
                train_rows: np.ndarray, bounds: Bounds, alpha: float, start_mse: float) -> None:
    last = curve[-1] if curve else {}
    metrics = {"algo": algo, "seed": seed, "steps": cfg.steps, "critic_pretrain_steps": cfg.critic_pretrain_steps,
               "demo_transitions": int(len(train_rows)), "r_min": bounds.r_min, "r_max": bounds.r_max,
               "alpha": alpha, "start_demo_mse": round(start_mse, 5),
               **{f"final_{key}": v for key, v in last.items() if key not in ("step", "phase")}}
    save_policy(learner.member_actor(k), out / "policy.pt", algo=algo, seed=seed, steps=cfg.steps)
    atomic_write(out / "curve.tsv", lambda p: pd.DataFrame(curve).to_csv(p, sep="\t", index=False))
    atomic_json(metrics, out / "metrics.json")


if __name__ == "__main__":
    run_stage(main)
