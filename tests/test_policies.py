"""Policies and tanh-Gaussian densities: finite log-density at +-1, densities that match
samples, batched variance head, stationarity of HetStat off the data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.bc import bc_loss, fit, batch_sampler
from pipeline.distributions import tanh_gaussian_log_prob, tanh_gaussian_sample
from pipeline.policies import HetStatPolicy, TanhGaussianMLP, load_policy, save_policy, triangle_wave


@pytest.mark.parametrize("make", [lambda: HetStatPolicy(11, 3), lambda: TanhGaussianMLP(11, 3)])
def test_log_prob_finite_at_action_bounds(make):
    policy = make()
    obs = torch.randn(4, 11)
    act = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [0.9999, -0.99999, 0.5]])
    lp = policy.log_prob(obs, act)
    assert torch.isfinite(lp).all()
    lp.sum().backward()  # gradients are finite too
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


def test_log_prob_at_clip_is_gaussian_tail_mass_over_the_clipped_width():
    loc, std = torch.tensor([[0.2]]), torch.tensor([[0.5]])
    width = 1.0 - 0.999
    lp = tanh_gaussian_log_prob(loc, std, torch.tensor([[1.0]]))
    upper_tail = 0.5 * math.erfc((math.atanh(0.999) - 0.2) / (0.5 * math.sqrt(2)))  # P(u > atanh(0.999))
    assert lp.item() == pytest.approx(math.log(upper_tail / width), rel=1e-4)
    lower = tanh_gaussian_log_prob(loc, std, torch.tensor([[-1.0]]))
    lower_tail = 0.5 * math.erfc((math.atanh(0.999) + 0.2) / (0.5 * math.sqrt(2)))
    assert lower.item() == pytest.approx(math.log(lower_tail / width), rel=1e-4)


@pytest.mark.parametrize("loc, std", [(0.0, 1.0), (0.3, 0.6), (4.0, 0.3), (-3.0, 1.0), (2.0, 0.05), (0.0, 3.0)])
def test_density_integrates_to_one_over_the_action_interval(loc, std):
    """Quadrature of exp(log q) over [-1, 1]: the interior on a fine grid in u = atanh(a) (where the
    saturated density's spike near +-1 is smooth), plus the two clipped end segments of width 1 - clip."""
    clip = 0.999
    u = torch.linspace(-math.atanh(clip), math.atanh(clip), 400_001, dtype=torch.float64)
    a = torch.tanh(u)
    loc_t, std_t = torch.full_like(a, loc).view(-1, 1), torch.full_like(a, std).view(-1, 1)
    q = tanh_gaussian_log_prob(loc_t, std_t, a.view(-1, 1)).exp()
    interior = torch.trapezoid(q * (1.0 - a.pow(2)), u).item()
    ends = [tanh_gaussian_log_prob(torch.tensor([[loc]]), torch.tensor([[std]]), torch.tensor([[x]])).exp().item()
            for x in (1.0, -1.0)]
    # the density is constant on [clip, 1]: 0.9995 and 1.0 give the same value
    assert tanh_gaussian_log_prob(torch.tensor([[loc]]), torch.tensor([[std]]), torch.tensor([[0.9995]])).exp().item() \
        == pytest.approx(ends[0], rel=1e-6)
    total = interior + (1.0 - clip) * sum(ends)
    assert total == pytest.approx(1.0, abs=2e-3)


def test_log_prob_matches_monte_carlo_histogram():
    torch.manual_seed(0)
    loc, std = torch.full((400_000, 1), 0.3), torch.full((400_000, 1), 0.6)
    samples, sample_lp = tanh_gaussian_sample(loc, std)
    # the sampler's own log-density equals the density function at the sample
    assert torch.allclose(sample_lp, tanh_gaussian_log_prob(loc, std, samples), atol=1e-3)
    edges = np.linspace(-0.9, 0.9, 19)
    counts, _ = np.histogram(samples.numpy().ravel(), bins=edges)
    empirical = counts / (len(samples) * np.diff(edges))
    centres = torch.tensor(0.5 * (edges[1:] + edges[:-1]), dtype=torch.float32).view(-1, 1)
    analytic = tanh_gaussian_log_prob(loc[: len(centres)], std[: len(centres)], centres).exp().numpy()
    np.testing.assert_allclose(empirical, analytic, rtol=0.05)


def test_triangle_wave_is_periodic_and_scaled():
    x = torch.linspace(-10, 10, 101)
    assert torch.allclose(triangle_wave(x + 2 * math.pi), triangle_wave(x), atol=1e-4)
    peak = math.pi / 2 * math.pi / (2 * math.sqrt(2))
    assert triangle_wave(torch.tensor(math.pi / 2)).item() == pytest.approx(peak, rel=1e-6)


def test_hetstat_initialisation_matches_csil():
    p = HetStatPolicy(11, 3)
    obs = torch.randn(8, 11)
    loc, std = p.dist_params(obs)
    assert torch.all(loc == 0)                                   # zero-initialised mean head
    assert torch.all(std <= math.sqrt(0.75) + 1e-6)              # capped at the prior std
    assert torch.allclose(p.log_lengthscales, torch.zeros(12))
    assert torch.allclose(HetStatPolicy(11, 3, log_lengthscale_init=-5.0).log_lengthscales, torch.full((12,), -5.0))
    L = p.scale_factors().view(256, 3, 256)
    assert torch.allclose(L[:, 0, :], torch.eye(256))            # zeros -> identity


def test_hetstat_variance_head_equals_per_dimension_loop():
    torch.manual_seed(1)
    p = HetStatPolicy(5, 3, features=16)
    with torch.no_grad():
        p.scale_raw.normal_(0, 0.3)
    f = torch.randn(7, 16)
    std = p.std(f)
    raw = p.scale_raw.detach()
    for k in range(3):
        L = torch.tril(raw[:, k, :], diagonal=-1) + torch.diag(raw[:, k, :].diagonal().exp())
        var = ((f @ L) ** 2).sum(-1)
        assert torch.allclose(std[:, k], math.sqrt(0.75) * torch.tanh(torch.sqrt(1e-5 + var)), atol=1e-5)


def _fit_on_toy(policy, steps=400):
    torch.manual_seed(0)
    obs = torch.randn(2000, 11)
    act = torch.tanh(torch.stack([obs[:, 0] + 0.5 * obs[:, 1], -obs[:, 2], 0.7 * obs[:, 3] * obs[:, 0]], -1))
    loss = "faithful" if isinstance(policy, HetStatPolicy) else "nll"
    fit(policy, batch_sampler(obs, act, 256), (obs[:256], act[:256]), steps=steps, lr=1e-3, weight_decay=0.0,
        loss=loss, eval_every=steps, patience=10, desc="toy")
    return obs, act


def test_hetstat_returns_to_prior_far_from_data_mlp_does_not():
    torch.manual_seed(0)
    het, mlp = HetStatPolicy(11, 3, hidden=64, features=64), TanhGaussianMLP(11, 3, (64, 64, 64))
    far = 10.0 * torch.randn(2000, 11)
    with torch.no_grad():
        _, prior_std = het.dist_params(far)      # untrained: the prior predictive
    obs, act = _fit_on_toy(het)
    _fit_on_toy(mlp)
    with torch.no_grad():
        het_loc, het_std = het.dist_params(far)
        _, het_std_data = het.dist_params(obs[:2000])
        mlp_loc, mlp_std = mlp.dist_params(far)
    # HetStat far from the data: mean action near 0 and std back near the prior's
    assert torch.tanh(het_loc).abs().mean() < 0.5 * torch.tanh(mlp_loc).abs().mean()
    assert het_std.mean() > 0.85 * prior_std.mean()
    assert het_std.mean() > 1.5 * het_std_data.mean()
    # the plain MLP extrapolates: its mean action saturates there
    assert torch.tanh(mlp_loc).abs().mean() > 0.7


def test_save_and_load_round_trip(tmp_path):
    p = HetStatPolicy(11, 3, activation="sincos")
    with torch.no_grad():
        p.loc_weights.normal_()
    save_policy(p, tmp_path / "p.pt", stage="x")
    q = load_policy(tmp_path / "p.pt")
    obs = torch.randn(3, 11)
    assert torch.allclose(p.act(obs), q.act(obs))
    torch.load(tmp_path / "p.pt", weights_only=True)


def test_faithful_loss_trains_variance_head_only_through_nll():
    torch.manual_seed(0)
    p = HetStatPolicy(11, 3)
    with torch.no_grad():
        p.loc_weights.normal_(0, 0.1)
    obs, act = torch.randn(64, 11), torch.rand(64, 3) * 2 - 1
    f = p.stationary_features(obs)
    loc = p.loc(f)
    nll_only = -tanh_gaussian_log_prob(loc.detach(), p.std(f.detach()), act).mean()
    nll_only.backward()
    assert p.scale_raw.grad.abs().sum() > 0
    assert p.loc_weights.grad is None and p.torso[0].weight.grad is None
    p.zero_grad(set_to_none=True)
    bc_loss(p, obs, act, "faithful").backward()
    assert p.loc_weights.grad.abs().sum() > 0 and p.torso[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["faithful", "nll", "mse"])
@pytest.mark.parametrize("make", [lambda: HetStatPolicy(11, 3), lambda: TanhGaussianMLP(11, 3)])
def test_weighted_bc_loss_is_the_per_sample_weighted_mean(make, kind):
    torch.manual_seed(0)
    p = make()
    obs, act = torch.randn(8, 11), torch.rand(8, 3) * 2 - 1
    assert torch.allclose(bc_loss(p, obs, act, kind, torch.ones(8)), bc_loss(p, obs, act, kind))
    w = torch.zeros(8)
    w[2] = 8.0                                    # all the weight on one sample: that sample's loss
    assert torch.allclose(bc_loss(p, obs, act, kind, w), bc_loss(p, obs[2:3], act[2:3], kind), atol=1e-5)


def test_fit_keep_last_runs_every_step_and_keeps_the_last_iterate():
    torch.manual_seed(0)
    obs, act = torch.randn(128, 11), torch.rand(128, 3) * 1.6 - 0.8
    val = (obs[:32], -act[:32])     # held-out actions opposite to the trained ones: early stopping fires
    common = dict(steps=60, lr=3e-3, weight_decay=0.0, loss="nll", eval_every=10, patience=1, desc="t")
    best = fit(TanhGaussianMLP(11, 3, hidden=(32,)), batch_sampler(obs, act, 32), val, **common)
    p = TanhGaussianMLP(11, 3, hidden=(32,))
    last = fit(p, batch_sampler(obs, act, 32), val, keep="last", **common)
    assert best.steps_run < 60
    assert last.steps_run == last.best_step == 60 and last.best == {k: v for k, v in last.curve[-1].items()
                                                                 if k not in ("step", "train_loss")}
