"""Stage reward: the coherent reward of every expert and suboptimal transition, and its audit.

The reward's policy is BC's stage-2 policy, refined first by CSIL's reward refinement when
reward.refine_steps > 0 (on the demonstrations' training rows, the split every method uses, and the
other data). Writes data/reward/policy.pt (that policy: the reward of model transitions),
data/reward/rewards.h5 (expert, suboptimal arrays, aligned with data/ingested/*.h5),
data/reward/metrics.json (expert_mean, suboptimal_mean, auc, the episode-level ranking and the
plain-MLP baseline's auc: what runs compare), data/reward/details.json (the full audits: when refined,
the unrefined stage-2 policy's under "unrefined"; the baseline's under "baseline"; the refinement's curve)
and data/reward/histogram.csv for dvc plots. The suboptimal data are the sources alone (ingest keeps
the demonstrations apart), so no expert transition is scored as a negative.
"""
from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from pipeline.bc import expert_split_rows
from pipeline.config import load_params
from pipeline.datasets import EpisodeDataset
from pipeline.errors import ArtefactError
from pipeline.policies import load_policy, save_policy
from pipeline.reward import coherent_reward_batched, refine_reward_policy, resolve_alpha, reward_audit
from pipeline.stage import run_stage
from pipeline.utils import atomic_json, atomic_write, resolve_device

OUT = Path("data/reward")
log = logging.getLogger("reward")


def main() -> None:
    params = load_params()
    cfg = params.reward
    device = resolve_device(params.device)
    expert = EpisodeDataset.load("data/ingested/expert.h5")
    suboptimal = EpisodeDataset.load("data/ingested/suboptimal.h5")
    policy = load_policy("data/bc/policy.pt", device)
    baseline = load_policy("data/bc/baseline.pt", device)
    for name, p in (("data/bc/policy.pt", policy), ("data/bc/baseline.pt", baseline)):
        if (p.obs_dim, p.act_dim) != (expert.obs_dim, expert.act_dim):
            raise ArtefactError(f"{name}: policy is for obs/act dims {(p.obs_dim, p.act_dim)} but "
                                f"data/ingested has {(expert.obs_dim, expert.act_dim)}; rerun `dvc repro bc`")
    alpha = resolve_alpha(cfg.alpha, expert.act_dim)
    # (obs, act) on the device once: every policy below is scored on the same tensors
    pairs = [tuple(torch.as_tensor(a, device=device) for a in (d.observations, d.actions)) for d in (expert, suboptimal)]

    def rewards(p) -> tuple[np.ndarray, np.ndarray]:
        return tuple(coherent_reward_batched(p, obs, act, alpha).cpu().numpy() for obs, act in pairs)

    audit = lambda r_e, r_s: reward_audit(r_e, r_s, suboptimal.rewards, cfg.r_min, suboptimal.episode_starts)
    refined, curve = policy, []
    if cfg.refine_steps:
        train_rows, _ = expert_split_rows(expert, params.bc.val_fraction, params.seed)
        rows = torch.as_tensor(train_rows, device=device)
        refined, curve = refine_reward_policy(
            policy, tuple(x[rows] for x in pairs[0]), pairs[1], alpha=alpha, steps=cfg.refine_steps,
            lr=cfg.refine_lr, batch_size=cfg.refine_batch_size, seed=params.seed)
    r_exp, r_sub = rewards(refined)
    b_exp, b_sub = rewards(baseline)
    details = {**audit(r_exp, r_sub), "alpha": alpha, "r_min": cfg.r_min,
               "r_max": float(np.max(r_exp)), "audited_suboptimal_transitions": suboptimal.n_transitions,
               "refine_steps": cfg.refine_steps, "refine_curve": curve,
               **({"unrefined": audit(*rewards(policy))} if cfg.refine_steps else {}),
               "baseline": audit(b_exp, b_sub)}
    metrics = {**{k: details[k] for k in ("expert_mean", "suboptimal_mean", "auc", "suboptimal_episode_spearman")
                  if k in details},
               "baseline": {"auc": details["baseline"]["auc"]}}
    lo = min(r_exp.min(), np.maximum(r_sub, cfg.r_min).min())
    edges = np.linspace(lo, max(r_exp.max(), r_sub.max()), cfg.hist_bins + 1)
    hist = pd.DataFrame({"reward": 0.5 * (edges[1:] + edges[:-1]),
                         "expert": np.histogram(np.clip(r_exp, lo, None), edges, density=True)[0],
                         "suboptimal": np.histogram(np.clip(r_sub, lo, None), edges, density=True)[0]})

    def write_h5(path: Path) -> None:
        with h5py.File(path, "w") as f:
            f.create_dataset("expert", data=r_exp, track_times=False)
            f.create_dataset("suboptimal", data=r_sub, track_times=False)
            f.attrs["alpha"] = alpha
    save_policy(refined, OUT / "policy.pt", stage="reward", refine_steps=cfg.refine_steps)
    atomic_write(OUT / "rewards.h5", write_h5)
    atomic_write(OUT / "histogram.csv", lambda p: hist.to_csv(p, index=False))
    atomic_json(details, OUT / "details.json")
    atomic_json(metrics, OUT / "metrics.json")
    log.info("coherent reward%s: expert %.3f, suboptimal %.3f, AUC %.3f, floor %.0f%%, spearman %.2f "
             "(per episode %.2f; baseline MLP: AUC %.3f, floor %.0f%%, spearman %.2f)",
             f" (refined {cfg.refine_steps} steps)" if cfg.refine_steps else "", details["expert_mean"],
             details["suboptimal_mean"], details["auc"], 100 * details["suboptimal_floor_fraction"],
             details["suboptimal_env_reward_spearman"], details.get("suboptimal_episode_spearman", float("nan")),
             details["baseline"]["auc"],
             100 * details["baseline"]["suboptimal_floor_fraction"], details["baseline"]["suboptimal_env_reward_spearman"])


if __name__ == "__main__":
    run_stage(main, __doc__)
