"""Stage bc: CSIL HetStat behaviour cloning (two stages) and the plain MLP BC baseline.

Writes data/bc/stage1.pt (50/50 suboptimal + expert; the improved actor starts here),
data/bc/policy.pt (stage 2, expert only; defines the coherent reward), data/bc/baseline.pt
(plain tanh-Gaussian MLP BC, seed `seed`), data/bc/baselines/ (the baselines for seeds seed+1 ...
when `bc.baseline_seeds` > 1), data/bc/metrics.json (the held-out fit: what runs compare),
data/bc/details.json (every fit's figures and steps), data/bc/curve.tsv, data/bc/baseline_curve.tsv.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from pipeline.bc import (baseline_seeds, batch_sampler, fit, fit_seeds, mixed_sampler, observation_stats,
                         split_expert_episodes)
from pipeline.config import load_params
from pipeline.datasets import EpisodeDataset
from pipeline.policies import HetStatPolicy, TanhGaussianMLP, save_policy
from pipeline.stage import run_stage
from pipeline.utils import atomic_json, atomic_write, resolve_device, seed_everything

OUT = Path("data/bc")
log = logging.getLogger("bc")


def write_extra_baselines(extra: list) -> None:
    """data/bc/baselines/: the plain BC baselines beyond the first (seed+1, ...), and an index."""
    folder = OUT / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("baseline-*.pt"):
        stale.unlink()
    for seed, policy, fitted in extra:
        save_policy(policy, folder / f"baseline-{seed}.pt", stage="baseline", seed=seed, metrics=fitted.best)
    atomic_json({"seeds": [seed for seed, _, _ in extra]}, folder / "index.json")


def main() -> None:
    params = load_params()
    cfg = params.bc
    device = resolve_device(params.device)
    seed_everything(params.seed)
    expert = EpisodeDataset.load("data/ingested/expert.h5")
    suboptimal = EpisodeDataset.load("data/ingested/suboptimal.h5")
    train, val = split_expert_episodes(expert, cfg.val_fraction, params.seed)
    log.info("expert: %d train / %d held-out episodes (%d / %d transitions); suboptimal: %d transitions",
             train.n_episodes, val.n_episodes, train.n_transitions, val.n_transitions, suboptimal.n_transitions)
    mean, std = observation_stats(expert, suboptimal)
    t = lambda d: (torch.as_tensor(d.observations, device=device), torch.as_tensor(d.actions, device=device))
    # Stage 1's suboptimal half: the sources, plus (data.expert.add_to_suboptimal) the *training* expert
    # episodes only, so the held-out episodes that early stopping scores are never trained on.
    stage1_pool = EpisodeDataset.concatenate([suboptimal, train]) if params.data.expert.add_to_suboptimal \
        else suboptimal
    train_b, val_b, sub_b = t(train), t(val), t(stage1_pool)
    start = time.time()
    common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, eval_every=cfg.eval_every, patience=cfg.patience)

    policy = HetStatPolicy(expert.obs_dim, expert.act_dim, hidden=cfg.hidden, bottleneck=cfg.bottleneck,
                           features=cfg.features, prior_var=cfg.prior_var, activation=cfg.activation,
                           log_lengthscale_init=cfg.log_lengthscale_init).to(device)
    policy.normalizer.set(mean.to(device), std.to(device))
    s1 = fit(policy, mixed_sampler(sub_b, train_b, cfg.batch_size), val_b, steps=cfg.stage1_steps,
             loss=cfg.loss, desc="bc stage 1 (suboptimal+expert)", **common)
    stage1 = copy.deepcopy(policy)
    s2 = fit(policy, batch_sampler(*train_b, cfg.batch_size), val_b, steps=cfg.stage2_steps,
             loss=cfg.stage2_loss, desc="bc stage 2 (expert)", step_offset=s1.steps_run, **common)

    def make_baseline() -> TanhGaussianMLP:
        baseline = TanhGaussianMLP(expert.obs_dim, expert.act_dim,
                                   hidden=(cfg.baseline_hidden,) * cfg.baseline_layers).to(device)
        baseline.normalizer.set(mean.to(device), std.to(device))
        return baseline
    # All baseline seeds in one vectorised fit; each depends only on its seed (its initialisation after
    # seed_everything(seed), its own minibatch and noise stream), not on what ran before it or beside it.
    seeds = baseline_seeds(params.seed, cfg.baseline_seeds)
    fitted_policies, fits = fit_seeds(make_baseline, seeds, train_b, val_b, steps=cfg.baseline_steps, loss="nll",
                                      keep=cfg.baseline_keep, batch_size=cfg.batch_size, device=device,
                                      desc=f"bc baselines (plain MLP, seeds {seeds[0]}-{seeds[-1]})", **common)
    baselines = list(zip(seeds, fitted_policies, fits))
    _, baseline, base = baselines[0]

    wall = time.time() - start
    metrics = {"val_mse": s2.best["val_mse"], "val_nll": s2.best["val_nll"], "stage1_val_mse": s1.best["val_mse"],
               "baseline": {"val_mse": base.best["val_mse"], "val_nll": base.best["val_nll"]}}
    details = {**s2.best, "steps": s1.steps_run + s2.steps_run, "best_step_stage2": s2.best_step,
               "train_episodes": train.n_episodes, "val_episodes": val.n_episodes,
               "stage1": {**s1.best, "steps": s1.steps_run, "best_step": s1.best_step},
               "baseline": {**base.best, "steps": base.steps_run, "best_step": base.best_step},
               "baseline_seeds": {str(seed): {**f.best, "best_step": f.best_step} for seed, _, f in baselines}}
    save_policy(stage1, OUT / "stage1.pt", stage="stage1", metrics=s1.best)
    save_policy(policy, OUT / "policy.pt", stage="stage2", metrics=s2.best)
    save_policy(baseline, OUT / "baseline.pt", stage="baseline", metrics=base.best)
    write_extra_baselines(baselines[1:])
    curve = pd.DataFrame([{**r, "phase": "stage1"} for r in s1.curve] + [{**r, "phase": "stage2"} for r in s2.curve])
    atomic_write(OUT / "curve.tsv", lambda p: curve.to_csv(p, sep="\t", index=False))
    atomic_write(OUT / "baseline_curve.tsv", lambda p: pd.DataFrame(base.curve).to_csv(p, sep="\t", index=False))
    atomic_json(details, OUT / "details.json")
    atomic_json(metrics, OUT / "metrics.json")
    log.info("csil bc: val_mse %.4f val_nll %.3f | baseline: val_mse %.4f val_nll %.3f | %.0fs",
             s2.best["val_mse"], s2.best["val_nll"], base.best["val_mse"], base.best["val_nll"], wall)


if __name__ == "__main__":
    run_stage(main, __doc__)
