"""Coherent reward: definition, ROC-AUC arithmetic, and that BC samples score above uniform actions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.bc import batch_sampler, fit
from pipeline.policies import HetStatPolicy
from pipeline.reward import (coherent_reward, coherent_reward_batched, coherent_reward_from_dist, refine_reward_policy,
                             refinement_terms, resolve_alpha, reward_audit, roc_auc, uniform_prior_log_prob)


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


def test_audit_ranks_episodes_by_mean_reward():
    # three episodes (lengths 2, 1, 3): mean rewards -4, 0, 1 (the -9 clipped to r_min -5), returns 1, 2, 3
    r = np.array([-3.0, -9.0 + 4.0, 0.0, 1.0, 1.0, 1.0])
    audit = reward_audit(np.array([2.0]), r, np.array([0.5, 0.5, 2.0, 1.0, 1.0, 1.0]), r_min=-5.0,
                         episode_starts=np.array([0, 2, 3, 6]))
    assert audit["suboptimal_episode_spearman"] == pytest.approx(1.0)
    audit = reward_audit(np.array([2.0]), r, np.array([3.0, 3.0, 2.0, 0.0, 0.0, 0.0]), r_min=-5.0,
                         episode_starts=np.array([0, 2, 3, 6]))
    assert audit["suboptimal_episode_spearman"] == pytest.approx(-1.0)


def test_refinement_terms_are_a_nonnegative_estimate_zero_at_the_prior():
    r = torch.linspace(-8, 4, 49)
    terms = refinement_terms(r)
    assert (terms >= 0).all() and refinement_terms(torch.zeros(1)).item() == 0.0
    assert torch.allclose(terms[r < -5], torch.exp(torch.tensor(5.0)) - 1 + r[r < -5])   # CSIL's clip at -5


def test_refinement_pulls_the_other_datas_reward_to_the_prior_and_keeps_demos_above():
    """A HetStat policy fit on demonstrations is confident at other states too (the toy's torso generalises);
    refinement must bring the other data's reward towards 0 (the prior's) while the demonstrations keep
    scoring above it, and be reproducible from its seed."""
    torch.manual_seed(0)
    demo_obs = torch.randn(600, 6)
    demo_act = torch.tanh(torch.stack([demo_obs[:, 0], -demo_obs[:, 1]], -1))
    other_obs = torch.randn(600, 6) + 1.5
    other_act = torch.rand(600, 2) * 2 - 1
    policy = HetStatPolicy(6, 2, hidden=64, features=64)
    fit(policy, batch_sampler(demo_obs, demo_act, 128), (demo_obs[:100], demo_act[:100]), steps=300, lr=1e-3,
        weight_decay=0.0, loss="nll", eval_every=300, patience=5, desc="toy")
    policy.eval()
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    kwargs = dict(alpha=0.5, steps=300, lr=1e-3, batch_size=128, seed=3, log_every=100)
    refined, curve = refine_reward_policy(policy, (demo_obs, demo_act), (other_obs, other_act), **kwargs)
    with torch.no_grad():
        before = coherent_reward(policy, other_obs, other_act, 0.5).clamp(min=-5)
        after = coherent_reward(refined, other_obs, other_act, 0.5).clamp(min=-5)
        demo_after = coherent_reward(refined, demo_obs, demo_act, 0.5).mean()
    assert refinement_terms(after).mean() < 0.5 * refinement_terms(before).mean()
    assert after.abs().mean() < before.abs().mean()
    assert demo_after > after.mean() + 0.5
    assert [row["step"] for row in curve] == [100, 200, 300] and curve[-1]["kl_estimate"] < curve[0]["kl_estimate"]
    assert not any(p.requires_grad for p in refined.parameters()) and not refined.training
    again, _ = refine_reward_policy(policy, (demo_obs, demo_act), (other_obs, other_act), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(refined.state_dict().values(), again.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), start.values()))   # input untouched
