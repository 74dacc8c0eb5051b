"""Coherent reward: definition, ROC-AUC arithmetic, and that BC samples score above uniform actions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.bc import batch_sampler, fit
from pipeline.policies import HetStatPolicy
from pipeline.reward import (coherent_reward, coherent_reward_batched, coherent_reward_from_dist, resolve_alpha,
                             reward_audit, roc_auc, uniform_prior_log_prob)


def test_coherent_reward_is_scaled_log_ratio_to_uniform_prior():
    torch.manual_seed(0)
    policy = HetStatPolicy(4, 2, hidden=32, features=32)
    obs, act = torch.randn(10, 4), torch.rand(10, 2) * 2 - 1
    r = coherent_reward(policy, obs, act, alpha=0.5)
    expected = 0.5 * (policy.log_prob(obs, act) + 2 * math.log(2.0))
    assert torch.allclose(r, expected)
    assert uniform_prior_log_prob(3) == pytest.approx(-3 * math.log(2))
    assert resolve_alpha("auto", 4) == 0.25 and resolve_alpha(0.1, 4) == 0.1
    assert torch.allclose(coherent_reward_batched(policy, obs, act, 0.5, chunk=3), r.detach())
    assert torch.allclose(coherent_reward_from_dist(*policy.dist_params(obs), act, 0.5), r)   # the seed-stacked path


def test_roc_auc_known_values():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5       # ties count half
    assert roc_auc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 3000), rng.normal(0, 1, 3000)
    brute = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(pos, neg) == pytest.approx(brute, abs=1e-9)


def test_audit_reports_floor_fraction_and_ranking():
    audit = reward_audit(np.array([1.0, 2.0]), np.array([-5.0, -5.0, 0.0, 1.0]), np.array([0.0, 0.1, 1.0, 2.0]),
                         r_min=-5.0)
    assert audit["auc"] == pytest.approx(7.5 / 8)
    assert audit["suboptimal_floor_fraction"] == 0.5
    assert audit["suboptimal_env_reward_spearman"] > 0.8


def test_bc_policy_samples_score_above_uniform_random_actions():
    torch.manual_seed(0)
    obs = torch.randn(1000, 6)
    act = torch.tanh(torch.stack([obs[:, 0], -obs[:, 1]], -1))
    policy = HetStatPolicy(6, 2, hidden=64, features=64)
    fit(policy, batch_sampler(obs, act, 128), (obs[:200], act[:200]), steps=300, lr=1e-3, weight_decay=0.0,
        loss="faithful", eval_every=300, patience=5, desc="toy")
    with torch.no_grad():
        own, _ = policy.sample(obs[:500])
        uniform = torch.rand(500, 2) * 2 - 1
        r_own = coherent_reward(policy, obs[:500], own, 0.5).mean()
        r_uniform = coherent_reward(policy, obs[:500], uniform, 0.5).mean()
    assert r_own > r_uniform + 0.5
