"""Stage dynamics: train the ensemble dynamics model on the ingested transitions.

Trains on the suboptimal sources (data/ingested/suboptimal.h5) plus, when
data.expert.add_to_suboptimal is true, the expert episodes (data/ingested/expert.h5).
Writes data/dynamics/model.pt, data/dynamics/metrics.json (holdout and 5-step errors: what
runs compare), data/dynamics/details.json (per member, elites, epochs) and
data/dynamics/curve.tsv (one row per epoch).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import load_params
from pipeline.datasets import EpisodeDataset
from pipeline.dynamics import (EnsembleDynamics, fit_dynamics, multistep_error, save_dynamics,
                               split_heldout_episodes)
from pipeline.errors import ArtefactError
from pipeline.stage import run_stage
from pipeline.termination import make_termination_fn
from pipeline.utils import atomic_json, atomic_write, resolve_device, seed_everything

EXPERT, SUBOPTIMAL = Path("data/ingested/expert.h5"), Path("data/ingested/suboptimal.h5")
OUT = Path("data/dynamics")
MIN_TRANSITIONS = 100
log = logging.getLogger("dynamics")


def training_pool(with_expert: bool) -> EpisodeDataset:
    """The suboptimal sources, followed by the expert episodes when ``with_expert``."""
    expert, suboptimal = EpisodeDataset.load(EXPERT), EpisodeDataset.load(SUBOPTIMAL)
    if (expert.obs_dim, expert.act_dim) != (suboptimal.obs_dim, suboptimal.act_dim):
        raise ArtefactError(f"{EXPERT} has obs/act dims ({expert.obs_dim}, {expert.act_dim}) but {SUBOPTIMAL} has "
                            f"({suboptimal.obs_dim}, {suboptimal.act_dim}); re-run `dvc repro ingest`")
    pool = EpisodeDataset.concatenate([suboptimal, expert]) if with_expert else suboptimal
    if pool.n_transitions < MIN_TRANSITIONS:
        raise ArtefactError(f"{SUBOPTIMAL}: only {pool.n_transitions} transitions to train the dynamics model on "
                            f"(need >= {MIN_TRANSITIONS}); add suboptimal data in params.yaml")
    for key in ("observations", "actions", "next_observations"):
        if not np.isfinite(getattr(pool, key)).all():
            raise ArtefactError(f"{SUBOPTIMAL} / {EXPERT}: non-finite values in '{key}'; re-run `dvc repro ingest`")
    return pool


def main() -> None:
    start = time.time()
    params = load_params()
    cfg, env = params.dynamics, params.env
    device = resolve_device(params.device)
    seed_everything(params.seed)
    pool = training_pool(params.data.expert.add_to_suboptimal)
    termination = {"env_id": env.id, "mode": env.termination, "obs_bound": env.obs_bound}
    make_termination_fn(**termination, obs_dim=pool.obs_dim)     # fail now, not in the improvement stage
    train, heldout = split_heldout_episodes(pool, cfg.multistep_episodes, cfg.multistep_horizon, params.seed)
    obs_dim, act_dim = pool.obs_dim, pool.act_dim
    del pool                     # `train` is a copy: keep one copy of a 1M-transition dataset, not two
    log.info("training on %d transitions (%d episodes); %d whole episodes held out for the %d-step check",
             train.n_transitions, train.n_episodes, heldout.n_episodes if heldout else 0, cfg.multistep_horizon)

    data = train.to_torch(device)
    model = EnsembleDynamics.from_config(cfg, obs_dim, act_dim).to(device)
    result = fit_dynamics(model, data["obs"], data["act"], data["next_obs"],
                          data["rew"] if cfg.learn_reward else None, lr=cfg.lr, batch_size=cfg.batch_size,
                          max_epochs=cfg.max_epochs, max_epoch_steps=cfg.max_epoch_steps, patience=cfg.patience,
                          holdout=cfg.holdout, seed=params.seed)
    del data
    multistep = multistep_error(model, heldout, cfg.multistep_horizon, device) if heldout else None
    if multistep is None:
        log.warning("no episode of length >= %d to hold out: multi-step check skipped", cfg.multistep_horizon)

    elite_mse = [result.holdout_mse[i] for i in result.elites]
    details = {"holdout_mse": float(np.mean(elite_mse)),
               "holdout_mse_members": result.holdout_mse,
               "elites": result.elites,
               "epochs": result.epochs, "steps": result.steps, "stopped_early": result.stopped_early,
               "train_transitions": result.n_train, "holdout_transitions": result.n_holdout,
               "multistep": multistep}
    metrics = {"holdout_mse": details["holdout_mse"],
               **({"multistep_mse": multistep["mse"], "multistep_baseline_mse": multistep["baseline_mse"]}
                  if multistep else {})}
    save_dynamics(model, OUT / "model.pt", termination=termination, metrics={"holdout_mse": metrics["holdout_mse"]})
    atomic_write(OUT / "curve.tsv", lambda p: pd.DataFrame(result.curve).to_csv(p, sep="\t", index=False))
    atomic_json(details, OUT / "details.json")
    atomic_json(metrics, OUT / "metrics.json")
    log.info("holdout MSE (elites) %.4f | %d-step MSE %s vs constant-state %s | %d epochs, %.0fs (stage %.0fs)",
             metrics["holdout_mse"], cfg.multistep_horizon,
             f"{multistep['mse']:.4f}" if multistep else "n/a",
             f"{multistep['baseline_mse']:.4f}" if multistep else "n/a", result.epochs, result.wall_s,
             time.time() - start)


if __name__ == "__main__":
    run_stage(main, __doc__)
