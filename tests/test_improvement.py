"""Offline improvement: targets (terminal vs timeout, clipping), AWR weights, the learner registry,
critic pre-training against a known value, seeds as a batch dimension (a seed inside a batch equals
the seed alone), no host transfer inside the loop, resume, and improvement over BC on a tiny task
for every learner."""
from __future__ import annotations

import copy
import sys
from typing import Callable

import numpy as np
import pytest
import torch

from pipeline.bc import batch_sampler, bc_loss, fit
from pipeline.config import AWRConfig, ImproveConfig
from pipeline.dynamics import EnsembleDynamics, fit_dynamics
from pipeline.improvement import (ALGORITHMS, Bounds, Learner, RingBuffer, SeedBuffers, _awr_actor_loss, action_grad_norm,
                                  actor_lr_at, awr_actor_weights, awr_weights, expectile_loss, normalise_per_source, refined_reward,
                                  td_target, train)
from pipeline.policies import HetStatPolicy
from pipeline.reward import coherent_reward
from pipeline.termination import make_termination_fn

BOUNDS = Bounds(r_min=-5.0, r_max=2.0, gamma=0.99)


def test_terminal_bootstraps_absorbing_value_timeout_bootstraps_next_state():
    rew = torch.tensor([1.0, 1.0])
    next_v = torch.tensor([10.0, 10.0])
    terminal = torch.tensor([1.0, 0.0])          # second: a timeout is not a terminal
    target = td_target(rew, next_v, terminal, BOUNDS)
    assert target[0].item() == pytest.approx(1.0 + 0.99 * (-5.0 / 0.01))
    assert target[1].item() == pytest.approx(1.0 + 0.99 * 10.0)


def test_critic_target_clipped_above_at_r_max_over_one_minus_gamma():
    target = td_target(torch.tensor([2.0]), torch.tensor([1e6]), torch.tensor([0.0]), BOUNDS)
    assert target.item() == pytest.approx(2.0 / 0.01)


def test_awr_weights_are_clipped_and_expectile_is_asymmetric():
    w = awr_weights(torch.tensor([0.0, 10.0, -10.0]), torch.zeros(3), beta=3.0, max_weight=100.0)
    assert w.tolist() == pytest.approx([1.0, 100.0, float(np.exp(-30.0))])
    assert expectile_loss(torch.tensor([1.0]), 0.7).item() == pytest.approx(0.7)
    assert expectile_loss(torch.tensor([-1.0]), 0.7).item() == pytest.approx(0.3)


def test_per_source_normalised_weights_give_each_source_its_batch_share():
    w = torch.tensor([1.0, 3.0, 100.0, 100.0, 0.0, 0.0])
    is_expert = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    out = normalise_per_source(w, is_expert, expert_share=2 / 6)   # the batch share
    assert out[:2].tolist() == pytest.approx([0.5, 1.5])           # mean 1 within the demonstrations
    assert out[2:].tolist() == pytest.approx([2.0, 2.0, 0.0, 0.0])   # mean 1 within the other data
    assert out.sum().item() == pytest.approx(len(w))


def test_normalise_per_source_gives_the_demonstrations_their_actor_share():
    w = torch.tensor([1.0, 3.0, 4.0, 4.0, 0.0, 0.0])
    is_expert = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    out = normalise_per_source(w, is_expert, expert_share=0.9)
    assert out[:2].sum().item() == pytest.approx(0.9 * len(w))     # demos: 90 % of the loss from 1/3 of the rows
    assert out[2:].sum().item() == pytest.approx(0.1 * len(w))
    assert (out[:2] / out[:2].sum()).tolist() == pytest.approx([0.25, 0.75])   # ranking within a source kept


@pytest.mark.parametrize("weight_demos", [False, True])
def test_awr_actor_weights_rank_only_the_other_data_unless_told_to_weight_demos(weight_demos):
    q = torch.tensor([3.0, -2.0, 0.5, 2.0, -1.0, 0.0])
    is_expert = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    cfg = AWRConfig(weight_demos=weight_demos, actor_expert_share=0.7)
    _, weights = awr_actor_weights(q, torch.zeros(6), is_expert, cfg)
    demos, other = weights[:3], weights[3:]
    assert demos.sum().item() == pytest.approx(0.7 * 6) and other.sum().item() == pytest.approx(0.3 * 6)
    assert other[0] > other[2] > other[1]                                # the advantage ranks the other data
    if weight_demos:
        assert demos[0] > demos[2] > demos[1]
    else:
        assert demos.tolist() == pytest.approx([1.4, 1.4, 1.4])          # every demonstration row counts the same


def test_action_grad_norm_is_the_critic_slope_on_the_demonstration_rows_only():
    # Q_k(s, a) = (s . u) * (a . w_k), twins equal: dQ/da = (s . u) w_k, so the norm is known exactly
    w = torch.tensor([[1.0, 2.0], [0.0, 3.0]])                       # (S=2, act 2)
    u = torch.tensor([1.0, -1.0, 0.5])
    critic = lambda obs, act: ((obs @ u) * (act * w[:, None, :]).sum(-1)).unsqueeze(1).expand(-1, 2, -1)
    obs, act = torch.randn(2, 6, 3), torch.rand(2, 6, 2).requires_grad_(True)
    is_expert = torch.tensor([1.0, 1, 1, 0, 0, 0]).expand(2, 6)
    slope = (obs[:, :3] @ u).pow(2).mean(-1)                          # mean over the demonstration rows
    expected = (slope * w.pow(2).sum(-1)).sqrt()
    assert torch.allclose(action_grad_norm(critic(obs, act), act, is_expert), expected, atol=1e-5)


def test_advantage_normalisation_makes_awr_weights_independent_of_the_reward_scale():
    g = torch.Generator().manual_seed(0)
    q, v = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g)
    w1 = awr_weights(q, v, 1.0, 100.0, normalise=True)
    torch.testing.assert_close(w1, awr_weights(50 * q, 50 * v, 1.0, 100.0, normalise=True))
    z = (q - v) / (q - v).std(-1, keepdim=True)
    torch.testing.assert_close(w1, torch.exp(z).clamp(max=100.0))
    assert not torch.allclose(awr_weights(q, v, 1.0, 100.0), awr_weights(50 * q, 50 * v, 1.0, 100.0))


def test_reward_refinement_raises_the_demonstrations_reward_and_pulls_the_other_datas_to_the_prior():
    """CSIL's refinement loss -mean r(demos) + KL estimate(other): trained alone, it raises the reward
    of the demonstration rows and moves the other rows' reward towards 0 (the prior's level);
    the pipeline's fixed reward (``refine_reward`` off) is untouched."""
    assert _small("csil", steps=1, pretrain=0)[0].reward_net is None
    learner, buffers, _ = _small("csil", steps=1, pretrain=0,
                                 configure=lambda cfg: setattr(cfg.csil, "refine_reward", True))
    g = torch.Generator().manual_seed(3)
    batch = buffers.mixed(32, 0.5)
    batch["act"][:, :16] = torch.tanh(learner.bc.dist_params(batch["obs"][0, :16])[0]).detach()  # demos: BC's actions
    batch["act"][:, 16:] = torch.rand(1, 16, ACT, generator=g) * 2 - 1
    batch["obs"][:, 16:] += 3.0                           # the other rows: states away from the demonstrations
    r0, loss0, info0 = refined_reward(learner, batch)
    for _ in range(200):
        _, loss, _ = refined_reward(learner, batch)
        learner.reward_opt.zero_grad()
        loss.sum().backward()
        learner.reward_opt.step()
    r1, loss1, info1 = refined_reward(learner, batch)
    assert loss1.item() < loss0.item()
    assert info1["expert_reward"].item() > info0["expert_reward"].item() + 0.1
    assert info1["reward_kl_est"].item() < info0["reward_kl_est"].item()
    assert r1.shape == (1, 32) and not r1.requires_grad


def test_ring_buffer_keeps_the_latest_transitions():
    buf = RingBuffer(5, {"obs": (1,), "act": (1,), "next_obs": (1,), "terminal": (), "rew": ()}, torch.device("cpu"))
    for start in (0, 3):
        x = torch.arange(start, start + 3, dtype=torch.float32)
        buf.add({"obs": x[:, None], "act": x[:, None], "next_obs": x[:, None], "terminal": x * 0, "rew": x})
    assert buf.size == 5 and sorted(buf.data["rew"].tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_actor_learning_rate_schedules():
    assert [actor_lr_at(s, 1e-3, 100, "constant") for s in (0, 50, 99)] == [1e-3] * 3
    assert actor_lr_at(0, 1e-3, 100, "cosine") == pytest.approx(1e-3)      # IQL: cosine decay to 0 over the run
    assert actor_lr_at(50, 1e-3, 100, "cosine") == pytest.approx(5e-4)
    assert 0 < actor_lr_at(99, 1e-3, 100, "cosine") < 1e-6


# -- a small random setup for mechanics tests ---------------------------------------------------------
OBS, ACT = 11, 3


def _small(algo: str, seeds=(0,), steps: int = 4, pretrain: int = 2, device: str = "cpu",
           configure: Callable[[ImproveConfig], None] | None = None, reward_policy: HetStatPolicy | None = None):
    torch.manual_seed(0)
    bc = HetStatPolicy(OBS, ACT, hidden=32, features=32).to(device)
    with torch.no_grad():
        bc.loc_weights.normal_(0, 0.5)
    dyn = EnsembleDynamics(OBS, ACT, n_members=3, n_elites=2, hidden=32, n_layers=2,
                           weight_decay=(1e-5, 1e-5, 1e-5)).to(device)
    cfg = ImproveConfig(steps=steps, critic_pretrain_steps=pretrain, batch_size=32, log_every=2, checkpoint_every=2,
                        eval_every=0, critic_hidden=32)
    cfg.awr.actor_batch_size = 32
    cfg.rambo.rollout_every, cfg.rambo.rollout_starts, cfg.rambo.horizon = 2, 16, 2
    cfg.rambo.adv_every, cfg.rambo.adv_steps, cfg.rambo.adv_batch = 2, 2, 16
    if configure is not None:
        configure(cfg)
    learner = Learner(algo, copy.deepcopy(bc), bc, cfg, BOUNDS, 1 / ACT, list(seeds), torch.device(device),
                      dynamics=dyn, termination_fn=make_termination_fn("Hopper-v5", "auto", 100.0),
                      reward_policy=reward_policy)
    n = 64
    g = torch.Generator().manual_seed(1)
    data = {"obs": torch.randn(n, OBS, generator=g) * 0.1 + torch.tensor([1.25] + [0.0] * (OBS - 1)),
            "act": torch.rand(n, ACT, generator=g) * 2 - 1, "terminal": torch.zeros(n)}
    data["next_obs"] = data["obs"] + 0.01
    data["rew"] = coherent_reward(bc, data["obs"], data["act"], 1 / ACT).detach().clamp(min=-5.0)
    data = {k: v.to(device) for k, v in data.items()}
    return learner, SeedBuffers(data, dict(data), bc, learner.rng), cfg


def test_the_registry_has_every_learner_the_params_accept():
    assert set(ALGORITHMS) == {"csil", "awr", "awr_uniform", "rambo"}


@pytest.mark.parametrize("algo", ["awr", "csil", "rambo"])
def test_the_target_critics_move_at_the_learners_own_rate(algo):
    """awr's target critics follow at improve.awr.tau, csil's and rambo's at improve.tau."""
    def configure(cfg: ImproveConfig) -> None:
        cfg.tau, cfg.awr.tau = 0.25, 0.5
    learner, _, _ = _small(algo, configure=configure)
    with torch.no_grad():
        for p in learner.critic.parameters():
            p.add_(1.0)
    before = [t.detach().clone() for t in learner.critic_target.parameters()]
    learner.soft_update()
    rate = 0.5 if algo == "awr" else 0.25
    for t, b, s in zip(learner.critic_target.parameters(), before, learner.critic.parameters()):
        torch.testing.assert_close(t, b + rate * (s - b))


@pytest.mark.parametrize("normalise_q", [True, False])
def test_normalised_q_makes_the_actor_step_independent_of_the_critic_scale(normalise_q):
    """With ``normalise_q`` the actor's Q term is Q / mean|Q| (TD3+BC's rule), so a critic scaled by 10
    gives the actor the same gradient, and kl_beta keeps its meaning whatever the reward's scale;
    without it the Q term's gradient grows tenfold against the KL term's."""
    grads = []
    for scale in (1.0, 10.0):
        learner, buffers, cfg = _small("csil", steps=1, pretrain=0)
        cfg.csil.normalise_q = normalise_q
        with torch.no_grad():
            for name, p in learner.critic.params().items():
                if name.startswith("l3."):
                    p.mul_(scale)
        ALGORITHMS["csil"].update(learner, buffers.mixed(cfg.batch_size, cfg.expert_ratio), True)
        grads.append(torch.cat([p.grad.flatten() for p in learner.actor.parameters()]))
    if normalise_q:
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    else:
        assert (grads[1] - grads[0]).norm() > 0.5 * grads[0].norm()


@pytest.mark.parametrize("algo", ["csil", "rambo"])
def test_confidence_weighted_kl_is_the_kl_where_pi_bc_is_sure_and_the_entropy_where_it_is_at_its_prior(algo):
    """kl_confidence_power p: the actor's term is log pi - c(s)^p log pi_BC with c = 1 - mean std_BC^2 / prior_var;
    p = 0 is the plain KL to pi_BC."""
    learner, buffers, cfg = _small(algo)
    b = buffers.mixed(8, 0.5)
    act, lp = learner.actor_sample(b["obs"])
    prior_std = learner.bc.prior_var ** 0.5
    log_bc = learner.bc_log_prob(b, act)
    torch.testing.assert_close(learner.kl_term(b, act, lp), lp - log_bc)          # p = 0
    getattr(cfg, algo).kl_confidence_power = 2.0
    c = 1.0 - b["bc_std"].pow(2).mean(-1) / learner.bc.prior_var
    torch.testing.assert_close(learner.kl_term(b, act, lp), lp - c.pow(2) * log_bc)
    at_prior = dict(b, bc_std=torch.full_like(b["bc_std"], prior_std))              # off the data: the entropy alone
    torch.testing.assert_close(learner.kl_term(at_prior, act, lp), lp)
    sure = dict(b, bc_std=torch.full_like(b["bc_std"], 1e-3), bc_next_std=torch.full_like(b["bc_std"], 1e-3))
    for nxt in (False, True):   # next states read their own precomputed pi_BC parameters
        torch.testing.assert_close(learner.kl_term(sure, act, lp, nxt=nxt), lp - learner.bc_log_prob(sure, act, nxt),
                                   rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_critic_pretraining_holds_the_actor_then_the_actor_moves(algo):
    learner, buffers, cfg = _small(algo, steps=0, pretrain=4)
    cfg.steps = 0
    actor0 = copy.deepcopy(learner.actor.state_dict())
    critic0 = copy.deepcopy(learner.critic.state_dict())
    curves = train(learner, buffers)
    assert all(torch.equal(v, learner.actor.state_dict()[k]) for k, v in actor0.items())
    critic_moved = not all(torch.equal(v, learner.critic.state_dict()[k]) for k, v in critic0.items())
    assert critic_moved == (algo != "awr_uniform")    # the ablation's uniform weights need no critic
    assert [r["phase"] for r in curves[0]] == ["pretrain", "pretrain"]
    learner2, buffers2, _ = _small(algo, steps=2, pretrain=2)
    train(learner2, buffers2)
    assert not all(torch.equal(v, learner2.actor.state_dict()[k]) for k, v in actor0.items())


@pytest.mark.parametrize("kind", ["nll", "faithful", "mse"])
def test_every_awr_actor_loss_is_the_weighted_bc_loss_of_each_seed_and_trains_the_actor(kind):
    """improve.awr.actor_loss: each seed's loss equals `bc_loss` of that seed's policy alone with the same
    weights, and an update moves every seed's actor (the loss reaches the stacked parameters)."""
    def configure(cfg: ImproveConfig) -> None:
        cfg.awr.actor_loss = kind
    learner, buffers, cfg = _small("awr_uniform", seeds=(0, 1), configure=configure)
    b = buffers.mixed(cfg.awr.actor_batch_size, cfg.expert_ratio)
    weights = torch.rand(b["obs"].shape[:2], generator=torch.Generator().manual_seed(3))
    losses = _awr_actor_loss(learner, b, weights)
    for k in range(2):
        alone = bc_loss(learner.member_actor(k), b["obs"][k], b["act"][k], kind, weights[k])
        torch.testing.assert_close(losses[k], alone, rtol=1e-5, atol=1e-6)
    actor0 = copy.deepcopy(learner.actor.state_dict())
    ALGORITHMS["awr_uniform"].update(learner, buffers.mixed(cfg.batch_size, cfg.expert_ratio), b, True)
    for k in range(2):
        assert any(not torch.equal(v[k], learner.actor.state_dict()[name][k]) for name, v in actor0.items()
                   if name.startswith("stacked")), f"seed {k}'s actor did not move with actor_loss {kind}"


def test_awr_uniform_is_awr_with_beta_zero_without_training_its_critic():
    """The ablation trains no critic, and its policy is exactly awr's with beta 0 (which trains critics
    its uniform weights never read) after pre-training and updates, seed by seed."""
    def beta_zero(cfg: ImproveConfig) -> None:
        cfg.awr.beta = 0.0
    with_critic, w_buffers, _ = _small("awr", seeds=(0, 1), steps=12, pretrain=4, configure=beta_zero)
    uniform, u_buffers, _ = _small("awr_uniform", seeds=(0, 1), steps=12, pretrain=4)
    critic0 = copy.deepcopy(uniform.critic.state_dict())
    train(with_critic, w_buffers)
    train(uniform, u_buffers)
    for (k, v), w in zip(with_critic.actor.state_dict().items(), uniform.actor.state_dict().values()):
        assert torch.equal(v, w), k
    assert all(torch.equal(v, uniform.critic.state_dict()[k]) for k, v in critic0.items())
    assert not all(torch.equal(v, with_critic.critic.state_dict()[k]) for k, v in critic0.items())


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_a_seed_inside_a_batch_equals_the_seed_trained_alone(algo):
    """Batching changes cost, not results: same initial parameters exactly, and after 100 updates
    (20 of them policy evaluation) the same parameters to float tolerance, for every learner."""
    batch, b_buffers, _ = _small(algo, seeds=(0, 1, 2), steps=80, pretrain=20)
    alone, a_buffers, _ = _small(algo, seeds=(1,), steps=80, pretrain=20)
    for name in ("actor", "critic"):
        for (k, v), (_, w) in zip(getattr(batch, name).state_dict().items(), getattr(alone, name).state_dict().items()):
            assert torch.equal(v[1], w[0]), (name, k)
    w1 = batch.critic.params()["l1.weight"]
    assert not torch.equal(w1[0], w1[1])   # seeds differ
    train(batch, b_buffers)
    train(alone, a_buffers)
    for name in ("actor", "critic"):
        for (k, v), (_, w) in zip(getattr(batch, name).state_dict().items(), getattr(alone, name).state_dict().items()):
            torch.testing.assert_close(v[1], w[0], rtol=1e-4, atol=1e-5, msg=f"{algo} {name} {k}")


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_no_tensor_leaves_the_device_inside_the_update_loop(algo, monkeypatch):
    """The loop never calls .item() / .cpu() / .numpy() / .tolist() between log points: with
    log_every beyond the run, any such call on a tensor fails the test."""
    learner, buffers, cfg = _small(algo, steps=6, pretrain=2)
    cfg.log_every = cfg.checkpoint_every = 10_000
    calls = []
    for name in ("item", "cpu", "numpy", "tolist"):
        original = getattr(torch.Tensor, name)
        def spy(self, *a, _name=name, _orig=original, **k):
            caller = sys._getframe(1).f_code.co_filename
            if "/pipeline/" in caller:      # the project's own code (torch internals on CPU tensors are host-side)
                calls.append(f"{_name} in {caller}:{sys._getframe(1).f_lineno}")
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    import pipeline.improvement as imp
    logged = []
    original_log_rows = imp.log_rows
    def log_rows(*a, **k):
        logged.append(len(calls))
        return original_log_rows(*a, **k)
    monkeypatch.setattr(imp, "log_rows", log_rows)
    train(learner, buffers)
    # the only host reads are the final log row's (after the loop's last update)
    assert logged and logged[0] == 0, calls


def test_resume_logs_the_same_rows_as_an_uninterrupted_run(tmp_path):
    full, f_buffers, _ = _small("csil", steps=4, pretrain=2)
    curves_full = train(full, f_buffers)
    part, p_buffers, cfg = _small("csil", steps=4, pretrain=2)
    path = tmp_path / "resume.pt"

    class Stop(Exception):
        pass
    import pipeline.improvement as imp
    original = imp.atomic_torch_save
    def save_then_stop(obj, p):
        original(obj, p)
        raise Stop
    imp.atomic_torch_save = save_then_stop
    try:
        with pytest.raises(Stop):
            train(part, p_buffers, resume_path=path, fingerprint="x")
    finally:
        imp.atomic_torch_save = original
    again, a_buffers, _ = _small("csil", steps=4, pretrain=2)
    curves = train(again, a_buffers, resume_path=path, fingerprint="x")
    assert curves == curves_full


@pytest.mark.parametrize("refined", [False, True])
def test_model_transitions_get_the_reward_stages_reward_and_pi_bc_stays_the_kl_reference(refined):
    from pipeline.improvement import model_rollouts
    torch.manual_seed(5)
    reward_policy = HetStatPolicy(OBS, ACT, hidden=32, features=32) if refined else None   # as data/reward/policy.pt
    learner, buffers, _ = _small("rambo", reward_policy=reward_policy)
    model_rollouts(learner, buffers.start_states(16, 0.5))
    buf = learner.model_buffers[0]
    assert buf.size > 0
    obs, act = buf.data["obs"][:buf.size], buf.data["act"][:buf.size]
    expected = coherent_reward(reward_policy if refined else learner.bc, obs, act, learner.alpha).clamp(min=BOUNDS.r_min)
    assert torch.allclose(buf.data["rew"][:buf.size], expected)
    assert torch.allclose(buf.data["bc_loc"][:buf.size], learner.bc.dist_params(obs)[0])


def test_adversarial_phase_moves_the_model_and_reports_how_far():
    from pipeline.improvement import adversarial_model_phase
    learner, buffers, _ = _small("rambo")
    before = copy.deepcopy(learner.models[0].state_dict())
    info = adversarial_model_phase(learner, buffers)
    assert info["model_shift"].shape == (1,) and info["model_shift"][0] > 0
    assert not all(torch.equal(v, learner.models[0].state_dict()[k]) for k, v in before.items())


def test_halt_makes_model_transitions_terminal_where_the_elites_disagree_beyond_the_data():
    """MOReL's HALT: the threshold is the halt_quantile of the elites' disagreement on the real data;
    model transitions beyond it are terminal (absorbing at r_min), the rest follow the env rule."""
    learner, buffers, cfg = _small("rambo")
    cfg.rambo.halt_quantile = 0.5
    learner.set_halt_threshold(buffers)
    obs, act = buffers.other["obs"], buffers.other["act"]
    d = learner.models[0].disagreement(obs, act)
    assert d.shape == (obs.shape[0],) and (d >= 0).all()
    torch.testing.assert_close(learner.halt_threshold, torch.quantile(torch.cat([d, d]), 0.5))
    halted = learner.model_termination(0)(obs, act, obs)
    rule = learner.termination_fn(obs, act, obs)
    assert torch.equal(halted, rule | (d > learner.halt_threshold)) and (halted & ~rule).any() and not halted.all()
    same = copy.deepcopy(learner.models[0])
    with torch.no_grad():                                          # identical elites never disagree
        for p in same.parameters():
            if p.dim() and p.shape[0] == same.n_members:
                p.copy_(p[:1].expand_as(p))
    assert same.disagreement(obs, act).abs().max() < 1e-5


def test_phase_metrics_are_logged_as_their_phase_means_not_diluted_by_the_other_steps():
    learner, buffers, cfg = _small("rambo", steps=4, pretrain=0)
    cfg.log_every = cfg.checkpoint_every = 4
    cfg.rambo.adv_every = 4                       # one adversarial phase in the only logged window
    import pipeline.improvement as imp
    phases = []
    original = imp.adversarial_model_phase
    imp.adversarial_model_phase = lambda L, b: phases.append(original(L, b)) or phases[-1]
    try:
        (curve,) = train(learner, buffers)
    finally:
        imp.adversarial_model_phase = original
    assert len(phases) == 1 and len(curve) == 1
    assert curve[0]["model_shift"] == pytest.approx(round(float(phases[0]["model_shift"][0]), 5), abs=1e-5)


# -- policy evaluation on a chain with a known value ---------------------------------------------------
@pytest.mark.parametrize("algo", ["csil", "awr"])
def test_critic_pretraining_reaches_the_true_value_of_the_fixed_policy_on_a_chain(algo):
    """States 0..3 (one-hot), any action; reward r(s) = [1, 0.5, -1, 2] depends on the state only; s -> s+1,
    and the step from state 3 is terminal (absorbing value r_min / (1 - gamma)). Q(s, .) = r(s) + gamma V(s+1)
    whatever the policy, so policy evaluation must reach it."""
    gamma, r_min = 0.9, -1.0
    bounds = Bounds(r_min=r_min, r_max=2.0, gamma=gamma)
    r = torch.tensor([1.0, 0.5, -1.0, 2.0])
    v = torch.zeros(5)
    v[4] = r_min / (1 - gamma)
    for s in (3, 2, 1, 0):
        v[s] = r[s] + gamma * v[s + 1]
    g = torch.Generator().manual_seed(0)
    n = 2000
    s = torch.randint(0, 4, (n,), generator=g)
    eye = torch.eye(4)
    data = {"obs": eye[s], "act": torch.rand(n, 1, generator=g) * 2 - 1, "rew": r[s],
            "next_obs": eye[(s + 1).clamp(max=3)], "terminal": (s == 3).float()}
    torch.manual_seed(0)
    policy = HetStatPolicy(4, 1, hidden=32, features=32)
    cfg = ImproveConfig(steps=0, critic_pretrain_steps=1000, batch_size=128, log_every=1000, checkpoint_every=1000,
                        eval_every=0, critic_lr=1e-3, tau=0.02, critic_hidden=64)
    cfg.awr.expectile, cfg.awr.tau = 0.5, 0.02
    learner = Learner(algo, copy.deepcopy(policy), policy, cfg, bounds, 1.0, [0], torch.device("cpu"))
    train(learner, SeedBuffers(data, data, policy, learner.rng))
    with torch.no_grad():
        q = learner.q(eye[None], torch.zeros(1, 4, 1)).min(1).values[0]
    torch.testing.assert_close(q, v[:4], atol=0.1, rtol=0.02)


# -- a tiny task: 1-D point mass, reach x = 1 and stay ---------------------------------------------
GOAL, DT, T = 1.0, 0.2, 30


def _step(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.clip(x + DT * np.clip(a, -1, 1), -3.0, 3.0)


def _expert(x: np.ndarray) -> np.ndarray:
    return np.clip(2.0 * (GOAL - x), -1.0, 1.0)


def _returns(policy, starts: np.ndarray) -> float:
    x = starts.copy()
    total = np.zeros_like(x)
    for _ in range(T):
        with torch.no_grad():
            a = policy.act(torch.as_tensor(x[:, None], dtype=torch.float32)).numpy()[:, 0]
        x = _step(x, a)
        total -= np.abs(x - GOAL)
    return float(total.mean())


def _episodes(starts: np.ndarray, act_fn, rng) -> dict[str, torch.Tensor]:
    obs, act, nxt = [], [], []
    x = starts.copy()
    for _ in range(T):
        a = act_fn(x, rng)
        x2 = _step(x, a)
        obs.append(x), act.append(a), nxt.append(x2)
        x = x2
    f = lambda v: torch.as_tensor(np.concatenate(v)[:, None], dtype=torch.float32)
    obs_t, act_t, next_t = f(obs), f(act).clamp(-1, 1), f(nxt)
    return {"obs": obs_t, "act": act_t, "next_obs": next_t, "terminal": torch.zeros(len(obs_t))}


def _tiny_task(algo: str, seeds: list[int]):
    """HetStat BC on one demonstration, then ``algo`` from it (all ``seeds`` in one batch)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    demo = _episodes(np.array([0.0]), lambda x, r: _expert(x), rng)                 # one expert episode
    random_play = _episodes(rng.uniform(-3, 3, 200), lambda x, r: r.uniform(-1, 1, x.shape), rng)
    bc = HetStatPolicy(1, 1, hidden=64, features=64)
    fit(bc, batch_sampler(demo["obs"], demo["act"], 30), (demo["obs"], demo["act"]), steps=800, lr=3e-3,
        weight_decay=0.0, loss="faithful", eval_every=800, patience=5, desc="bc")
    cfg = ImproveConfig(steps=1500, critic_pretrain_steps=300, batch_size=128, log_every=300, checkpoint_every=300,
                        eval_every=0, critic_hidden=128)
    cfg.awr.beta = 3.0                 # no terminals here: advantages are small, IQL's beta suits them
    cfg.awr.actor_expert_share = 0.5   # one demo spans a few states here: recovery must come from the other data
    cfg.awr.actor_batch_size = 128
    cfg.rambo.rollout_every, cfg.rambo.rollout_starts, cfg.rambo.horizon = 100, 500, 3
    cfg.rambo.adv_every, cfg.rambo.adv_steps, cfg.rambo.adv_batch = 500, 30, 128
    for d in (demo, random_play):
        d["rew"] = coherent_reward(bc, d["obs"], d["act"], 1.0).detach().clamp(min=-5.0)
    dynamics = None
    if algo == "rambo":
        dynamics = EnsembleDynamics(1, 1, n_members=3, n_elites=2, hidden=32, n_layers=2,
                                    weight_decay=(1e-5, 1e-5, 1e-5))
        fit_dynamics(dynamics, random_play["obs"], random_play["act"], random_play["next_obs"], max_epochs=30,
                     progress=False)
    learner = Learner(algo, copy.deepcopy(bc), bc, cfg, Bounds(-5.0, float(demo["rew"].max()), 0.99), 1.0, seeds,
                      torch.device("cpu"), dynamics, make_termination_fn("Pendulum-v1", "none", 100.0))
    train(learner, SeedBuffers(demo, random_play, bc, learner.rng))
    return bc, [learner.member_actor(k) for k in range(len(seeds))]


@pytest.mark.parametrize("algo", ["csil", "awr", "rambo"])
def test_every_learner_improves_on_bc_from_a_single_demonstration(algo):
    """One demonstration from x = 0 to the goal x = 1 never visits x > 1. There BC (HetStat) is
    uncertain and only creeps back; the learners, on the coherent reward and random play that does
    cover x > 1, learn to head back to the demonstrated states faster. Three seeds in one batch."""
    starts = np.linspace(1.5, 3.0, 8)              # beyond the goal: never demonstrated
    bc, actors = _tiny_task(algo, [0, 1, 2])
    bc_return = _returns(bc, starts)
    returns = [_returns(actor, starts) for actor in actors]
    assert np.mean(returns) > bc_return + 0.1 * abs(bc_return), (bc_return, returns)
    assert sum(r > bc_return for r in returns) >= 2, (bc_return, returns)
