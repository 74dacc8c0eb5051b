"""Stage reward: the coherent reward of every expert and suboptimal transition, and its audit.

Writes data/reward/rewards.h5 (expert, suboptimal arrays, aligned with data/ingested/*.h5),
data/reward/metrics.json (expert_mean, suboptimal_mean, auc, audits over the suboptimal sources,
i.e. without the expert episodes ingest appended to the pool; the same audit for the plain-MLP
baseline under "baseline") and data/reward/histogram.csv for dvc plots.
"""
from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from pipeline.config import load_params
from pipeline.datasets import EpisodeDataset
from pipeline.policies import load_policy
from pipeline.reward import coherent_reward_batched, resolve_alpha, reward_audit, roc_auc
from pipeline.stage import ArtefactError, run_stage
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
    t = lambda a: torch.as_tensor(a, device=device)

    def rewards(p) -> tuple[np.ndarray, np.ndarray]:
        return tuple(coherent_reward_batched(p, t(d.observations), t(d.actions), alpha).cpu().numpy()
                     for d in (expert, suboptimal))

    r_exp, r_sub = rewards(policy)
    b_exp, b_sub = rewards(baseline)
    # The audit's negatives are the suboptimal sources only: the expert episodes ingest appended to the
    # pool (add_to_suboptimal) *are* expert transitions and would be scored as both classes at once.
    n_sub = suboptimal.n_source_transitions
    sub_only, env_rew = r_sub[:n_sub], suboptimal.rewards[:n_sub]
    metrics = {**reward_audit(r_exp, sub_only, env_rew, cfg.r_min), "alpha": alpha, "r_min": cfg.r_min,
               "r_max": float(np.max(r_exp)), "audited_suboptimal_transitions": n_sub,
               "auc_with_added_expert": roc_auc(r_exp, r_sub),
               "baseline": reward_audit(b_exp, b_sub[:n_sub], env_rew, cfg.r_min)}
    lo = min(r_exp.min(), np.maximum(sub_only, cfg.r_min).min())
    edges = np.linspace(lo, max(r_exp.max(), sub_only.max()), cfg.hist_bins + 1)
    hist = pd.DataFrame({"reward": 0.5 * (edges[1:] + edges[:-1]),
                         "expert": np.histogram(np.clip(r_exp, lo, None), edges, density=True)[0],
                         "suboptimal": np.histogram(np.clip(sub_only, lo, None), edges, density=True)[0]})

    def write_h5(path: Path) -> None:
        with h5py.File(path, "w") as f:
            f.create_dataset("expert", data=r_exp)
            f.create_dataset("suboptimal", data=r_sub)
            f.attrs["alpha"] = alpha
    atomic_write(OUT / "rewards.h5", write_h5)
    atomic_write(OUT / "histogram.csv", lambda p: hist.to_csv(p, index=False))
    atomic_json(metrics, OUT / "metrics.json")
    log.info("coherent reward: expert %.3f, suboptimal %.3f, AUC %.3f, floor %.0f%%, spearman %.2f "
             "(baseline MLP: AUC %.3f, floor %.0f%%, spearman %.2f)", metrics["expert_mean"],
             metrics["suboptimal_mean"], metrics["auc"], 100 * metrics["suboptimal_floor_fraction"],
             metrics["suboptimal_env_reward_spearman"], metrics["baseline"]["auc"],
             100 * metrics["baseline"]["suboptimal_floor_fraction"], metrics["baseline"]["suboptimal_env_reward_spearman"])


if __name__ == "__main__":
    run_stage(main)
