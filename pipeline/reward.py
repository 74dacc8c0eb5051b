"""CSIL's coherent reward and its audits.

r(s, a) = alpha * (log q(a|s) - log p(a|s)), q the stage-2 BC policy, p the uniform
prior on [-1, 1]^d (log p = -d log 2), alpha = 1/d by default. Under KL-regularised RL
with weight alpha the optimal policy for this reward is q itself ("coherent"), so
policy improvement must use a KL weight beta < alpha.

`refine_reward_policy` is CSIL's reward refinement (reward.refine_steps): the reward's policy is
trained further to score the demonstrations high and the other data near the prior's reward, 0.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from pipeline.distributions import tanh_gaussian_log_prob
from pipeline.policies import Policy
from pipeline.utils import progress


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
                 r_min: float, episode_starts: np.ndarray | None = None) -> dict[str, float]:
    """Means, ROC-AUC for 'came from the expert', fraction at the floor, and ranking of the suboptimal data:
    per transition against the env reward and, given ``episode_starts`` ((E + 1,) offsets), per episode: the
    mean reward (clipped at r_min, as the learners see it) against the episode's env return."""
    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() > 0 and b.std() > 0 else float("nan")
    ranks = lambda x: np.argsort(np.argsort(x)).astype(np.float64)
    out = {"expert_mean": float(expert.mean()), "suboptimal_mean": float(suboptimal.mean()),
           "auc": roc_auc(expert, suboptimal),
           "suboptimal_floor_fraction": float((suboptimal <= r_min).mean()),
           "suboptimal_env_reward_pearson": corr(suboptimal, suboptimal_env_reward),
           "suboptimal_env_reward_spearman": corr(ranks(suboptimal), ranks(suboptimal_env_reward))}
    if episode_starts is not None and len(episode_starts) > 2:
        starts, lengths = episode_starts[:-1], np.diff(episode_starts)
        mean_r = np.add.reduceat(np.maximum(suboptimal, r_min).astype(np.float64), starts) / lengths
        returns = np.add.reduceat(suboptimal_env_reward.astype(np.float64), starts)
        out["suboptimal_episode_spearman"] = corr(ranks(mean_r), ranks(returns))
    return out


def refinement_terms(r_other: torch.Tensor) -> torch.Tensor:
    """CSIL's per-transition estimate exp(-max(r, -5)) - 1 + r >= 0 of the KL term of its reward refinement;
    0 exactly at r = 0, the prior's reward, so minimising it pulls the other data's reward to the prior's."""
    return torch.exp(-r_other.clamp(min=-5.0)) - 1.0 + r_other


def refine_reward_policy(policy: Policy, demos: tuple[torch.Tensor, torch.Tensor],
                         other: tuple[torch.Tensor, torch.Tensor], *, alpha: float, steps: int, lr: float,
                         batch_size: int, seed: int, log_every: int = 250) -> tuple[Policy, list[dict]]:
    """CSIL's reward refinement, run before improvement: a copy of the reward's policy minimises
    -mean r(demos) + mean refinement_terms(r(other)) by Adam on half-demonstration, half-other batches.

    CSIL trains this beside its critic; offline its objective involves only the fixed data, so optimising it
    first gives the same objective while every learner trains on one fixed, audited reward. Returns the
    refined policy (eval mode) and a curve of the batch means every ``log_every`` steps (the loop's only
    read-back)."""
    refined = copy.deepcopy(policy).train().requires_grad_(True)
    device = demos[0].device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    opt = torch.optim.Adam(refined.parameters(), lr=lr)
    n_demo = max(batch_size // 2, 1)
    curve, sums = [], torch.zeros(3, device=device)
    for step in progress(range(1, steps + 1), desc="refine reward", unit="step"):
        i = torch.randint(0, demos[0].shape[0], (n_demo,), device=device, generator=gen)
        j = torch.randint(0, other[0].shape[0], (batch_size - n_demo,), device=device, generator=gen)
        r_demo = coherent_reward(refined, demos[0][i], demos[1][i], alpha)
        r_other = coherent_reward(refined, other[0][j], other[1][j], alpha)
        kl_est = refinement_terms(r_other).mean()
        loss = -r_demo.mean() + kl_est
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums += torch.stack([r_demo.mean(), r_other.mean(), kl_est]).detach()
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            demo_r, other_r, kl = (sums / n).tolist()
            curve.append({"step": step, "demo_reward": round(demo_r, 4), "other_reward": round(other_r, 4),
                          "kl_estimate": round(kl, 4)})
            sums.zero_()
    return refined.eval().requires_grad_(False), curve
