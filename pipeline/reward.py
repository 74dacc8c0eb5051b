"""CSIL's coherent reward and its audits.

r(s, a) = alpha * (log q(a|s) - log p(a|s)), q the stage-2 BC policy, p the uniform
prior on [-1, 1]^d (log p = -d log 2), alpha = 1/d by default. Under KL-regularised RL
with weight alpha the optimal policy for this reward is q itself ("coherent"), so
policy improvement must use a KL weight beta < alpha.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.distributions import tanh_gaussian_log_prob
from pipeline.policies import Policy


def uniform_prior_log_prob(act_dim: int) -> float:
    return -act_dim * math.log(2.0)


def resolve_alpha(alpha: str | float, act_dim: int) -> float:
    return 1.0 / act_dim if alpha == "auto" else float(alpha)


def coherent_reward(policy: Policy, obs: torch.Tensor, act: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * (log q(a|s) - log p(a|s)) for a batch; differentiable w.r.t. the policy."""
    return coherent_reward_from_dist(*policy.dist_params(obs), act, alpha)


def coherent_reward_from_dist(loc: torch.Tensor, std: torch.Tensor, act: torch.Tensor, alpha: float) -> torch.Tensor:
    """The coherent reward from q's tanh-Gaussian parameters at the states (for seed-stacked policies,
    whose density is evaluated outside vmap: ``log_ndtr`` has no batching rule)."""
    return alpha * (tanh_gaussian_log_prob(loc, std, act) - uniform_prior_log_prob(act.shape[-1]))


@torch.no_grad()
def coherent_reward_batched(policy: Policy, obs: torch.Tensor, act: torch.Tensor, alpha: float,
                            chunk: int = 65536) -> torch.Tensor:
    """The reward of every transition, in chunks so memory stays bounded on big datasets."""
    return torch.cat([coherent_reward(policy, obs[i:i + chunk], act[i:i + chunk], alpha)
                      for i in range(0, obs.shape[0], chunk)]) if obs.shape[0] else obs.new_zeros(0)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting half."""
    scores = np.concatenate([positive, negative])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    # average ranks over ties
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for f, c in zip(first[counts > 1], counts[counts > 1]):
        ranks[order[f:f + c]] = f + (c + 1) / 2.0
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def reward_audit(expert: np.ndarray, suboptimal: np.ndarray, suboptimal_env_reward: np.ndarray,
                 r_min: float) -> dict[str, float]:
    """Means, ROC-AUC for 'came from the expert', fraction at the floor, and ranking of the suboptimal data."""
    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() > 0 and b.std() > 0 else float("nan")
    ranks = lambda x: np.argsort(np.argsort(x)).astype(np.float64)
    return {"expert_mean": float(expert.mean()), "suboptimal_mean": float(suboptimal.mean()),
            "auc": roc_auc(expert, suboptimal),
            "suboptimal_floor_fraction": float((suboptimal <= r_min).mean()),
            "suboptimal_env_reward_pearson": corr(suboptimal, suboptimal_env_reward),
            "suboptimal_env_reward_spearman": corr(ranks(suboptimal), ranks(suboptimal_env_reward))}
