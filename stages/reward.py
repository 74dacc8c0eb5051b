"""Stage reward: the coherent reward of every expert and suboptimal transition, and its audit.

Writes data/reward/rewards.h5 (expert, suboptimal arrays, aligned with data/ingested/*.h5),
data/reward/metrics.json (expert_mean, suboptimal_mean, auc and the plain-MLP baseline's auc: what
runs compare), data/reward/details.json (the full audits, the baseline's under "baseline") and
data/reward/histogram.csv for dvc plots. The suboptimal data are the sources alone (ingest keeps
the demonstrations apart), so no expert transition is scored as a negative.
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
from pipeline.errors import ArtefactError
from pipeline.policies import load_policy
from pipeline.reward import coherent_reward_batched, resolve_alpha, reward_audit
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
    t = lambda a: torch.as_tensor(a, device=device)

    def rewards(p) -> tuple[np.ndarray, np.ndarray]:
        return tuple(coherent_reward_batched(p, t(d.observations), t(d.actions), alpha).cpu().numpy()
                     for d in (expert, suboptimal))

    r_exp, r_sub = rewards(policy)
    b_exp, b_sub = rewards(baseline)
    details = {**reward_audit(r_exp, r_sub, suboptimal.rewards, cfg.r_min), "alpha": alpha, "r_min": cfg.r_min,
               "r_max": float(np.max(r_exp)), "audited_suboptimal_transitions": suboptimal.n_transitions,
               "baseline": reward_audit(b_exp, b_sub, suboptimal.rewards, cfg.r_min)}
    metrics = {**{k: details[k] for k in ("expert_mean", "suboptimal_mean", "auc")},
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
    atomic_write(OUT / "rewards.h5", write_h5)
    atomic_write(OUT / "histogram.csv", lambda p: hist.to_csv(p, index=False))
    atomic_json(details, OUT / "details.json")
    atomic_json(metrics, OUT / "metrics.json")
    log.info("coherent reward: expert %.3f, suboptimal %.3f, AUC %.3f, floor %.0f%%, spearman %.2f "
             "(baseline MLP: AUC %.3f, floor %.0f%%, spearman %.2f)", details["expert_mean"],
             details["suboptimal_mean"], details["auc"], 100 * details["suboptimal_floor_fraction"],
             details["suboptimal_env_reward_spearman"], details["baseline"]["auc"],
             100 * details["baseline"]["suboptimal_floor_fraction"], details["baseline"]["suboptimal_env_reward_spearman"])


if __name__ == "__main__":
    run_stage(main, __doc__)
