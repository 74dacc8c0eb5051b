"""Ensemble dynamics: vectorisation, training, elites / early stopping, sampling, rollouts, the stage."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.datasets import EpisodeDataset
from pipeline.dynamics import (EnsembleDynamics, fit_dynamics, load_dynamics, make_optimizer, multistep_error,
                               rollout, save_dynamics, split_heldout_episodes)
from pipeline.errors import ArtefactError
from pipeline.stage import run_stage
from pipeline.termination import make_termination_fn

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = dict(n_members=3, n_elites=2, hidden=32, n_layers=2, weight_decay=(1e-5, 1e-5, 1e-5))


def hopper_dataset(n_episodes: int = 30, seed: int = 0, max_steps: int = 100) -> EpisodeDataset:
    """Real Hopper-v5 episodes: random actions around a slowly drifting bias, so they last a while."""
    env = gym.make("Hopper-v5", max_episode_steps=max_steps)
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
    starts = [0]
    for ep in range(n_episodes):
        obs, _ = env.reset(seed=seed * 1000 + ep)
        done = False
        while not done:
            act = np.clip(rng.normal(0.0, 0.5, 3), -1, 1).astype(np.float32)
            next_obs, rew, term, trunc, _ = env.step(act)
            for key, value in zip(cols, (obs, act, rew, next_obs, term, trunc and not term)):
                cols[key].append(value)
            obs, done = next_obs, term or trunc
        starts.append(len(cols["rewards"]))
    env.close()
    arrays = {k: np.asarray(v, dtype=bool if k in ("terminals", "timeouts") else np.float32) for k, v in cols.items()}
    return EpisodeDataset(**arrays, episode_starts=np.asarray(starts, np.int64), meta={"env_id": "Hopper-v5"})


@pytest.fixture(scope="module")
def hopper() -> EpisodeDataset:
    return hopper_dataset()


# -- the ensemble ----------------------------------------------------------------------------
def test_vectorised_ensemble_equals_loop_of_separate_mlps() -> None:
    torch.manual_seed(0)
    model = EnsembleDynamics(5, 2, n_members=4, n_elites=2, hidden=16, n_layers=3,
                             weight_decay=(0.0,) * 4).double()
    x = torch.randn(4, 9, 7, dtype=torch.float64)
    mean, logvar = model(x)
    for k in range(4):
        layers: list[nn.Module] = []
        for i, ens in enumerate(model.layers):
            lin = nn.Linear(*ens.weight.shape[1:]).double()
            with torch.no_grad():
                lin.weight.copy_(ens.weight[k].T)
                lin.bias.copy_(ens.bias[k, 0])
            layers += [lin] + ([nn.SiLU()] if i < len(model.layers) - 1 else [])
        out = nn.Sequential(*layers)(x[k])
        m, lv = out[:, :5], out[:, 5:]
        lv = model.max_logvar - nn.functional.softplus(model.max_logvar - lv)
        lv = model.min_logvar + nn.functional.softplus(lv - model.min_logvar)
        torch.testing.assert_close(mean[k], m)
        torch.testing.assert_close(logvar[k], lv)
    # a member subset gives the same rows as the full ensemble
    members = torch.tensor([3, 1])
    sub_mean, _ = model(x[members], members)
    torch.testing.assert_close(sub_mean, mean[members])


def test_nll_loss_is_the_training_loss_and_adam_decay_matches_it() -> None:
    torch.manual_seed(0)
    model = EnsembleDynamics(4, 2, **SMALL)
    obs, act, nxt = torch.randn(16, 4), torch.randn(16, 2), torch.randn(16, 4)
    x = model.normalize_inputs(obs, act).expand(3, -1, -1)
    y = model.normalize_targets(obs, nxt).expand(3, -1, -1)
    loss = model.nll_loss(obs, act, nxt)
    torch.testing.assert_close(loss, model.training_loss(x, y))
    # d/dW of 0.5 wd ||W||^2 is wd W: exactly what Adam's coupled weight_decay adds
    loss.backward()
    with_decay = [layer.weight.grad.clone() for layer in model.layers]
    model.zero_grad()
    model.training_loss(x, y, weight_decay=False).backward()
    for wd, layer, g in zip(model.weight_decay, model.layers, with_decay):
        torch.testing.assert_close(layer.weight.grad + wd * layer.weight.detach(), g)
    groups = make_optimizer(model, 1e-3).param_groups
    assert [g["weight_decay"] for g in groups] == [*model.weight_decay, 0.0]


def test_learns_a_known_linear_system() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n, obs_dim, act_dim = 4000, 4, 2
    A, B = 0.1 * torch.randn(obs_dim, obs_dim, generator=g), 0.3 * torch.randn(act_dim, obs_dim, generator=g)
    obs, act = torch.randn(n, obs_dim, generator=g), torch.rand(n, act_dim, generator=g) * 2 - 1
    nxt = obs + obs @ A + act @ B
    model = EnsembleDynamics(obs_dim, act_dim, n_members=3, n_elites=2, hidden=64, n_layers=2,
                             weight_decay=(0.0,) * 3)
    result = fit_dynamics(model, obs, act, nxt, lr=3e-3, batch_size=128, max_epochs=40, patience=40,
                          progress=False)
    assert max(result.holdout_mse) < 5e-4, result.holdout_mse        # standardised target space
    test_obs, test_act = torch.randn(500, obs_dim, generator=g), torch.rand(500, act_dim, generator=g) * 2 - 1
    truth = test_obs + test_obs @ A + test_act @ B
    pred, reward = model.mean_step(test_obs, test_act)
    assert reward is None
    rel = (pred - truth).pow(2).mean() / (truth - test_obs).pow(2).mean()
    assert rel < 1e-3, rel
    sampled, _ = model.step(test_obs, test_act)     # the learned noise is small too
    assert (sampled - truth).pow(2).mean() / (truth - test_obs).pow(2).mean() < 5e-3


def test_elites_are_the_best_holdout_members_and_snapshots_are_kept(hopper: EpisodeDataset) -> None:
    torch.manual_seed(0)
    d = hopper.to_torch()
    model = EnsembleDynamics(11, 3, n_members=5, n_elites=3, hidden=32, n_layers=2, weight_decay=(1e-5,) * 3)
    result = fit_dynamics(model, d["obs"], d["act"], d["next_obs"], max_epochs=6, patience=6, progress=False)
    mse = np.array(result.holdout_mse)
    assert result.elites == sorted(np.argsort(mse)[:3].tolist())
    assert model.elites.tolist() == result.elites
    assert result.n_holdout == min(int(0.2 * hopper.n_transitions), 1000)
    for k in range(5):   # each member ends at the holdout MSE of its best (snapshot) epoch
        history = np.array([row[f"holdout_mse_m{k}"] for row in result.curve])
        assert np.isclose(history, mse[k], rtol=1e-5).any()
        assert mse[k] <= history.min() / 0.99 + 1e-7


def test_early_stopping_after_patience_epochs_without_improvement(hopper: EpisodeDataset) -> None:
    d = hopper.to_torch()
    model = EnsembleDynamics(11, 3, **SMALL)
    # a tiny lr: only the first epoch "improves" (from inf); later drops are far below 1 % and do not count
    result = fit_dynamics(model, d["obs"], d["act"], d["next_obs"], lr=1e-7, max_epochs=50, patience=3,
                          progress=False)
    assert result.stopped_early and result.epochs == 1 + 3
    assert [row["improved"] for row in result.curve] == [3, 0, 0, 0]
    capped = fit_dynamics(EnsembleDynamics(11, 3, **SMALL), d["obs"], d["act"], d["next_obs"], max_epochs=2,
                          max_epoch_steps=3, patience=5, progress=False)
    assert not capped.stopped_early and capped.epochs == 2 and capped.steps == 6


# -- sampling and log-likelihood ---------------------------------------------------------------
def constant_model(obs_dim: int = 3, n_members: int = 4, n_elites: int = 3) -> EnsembleDynamics:
    """Member k predicts delta = k + 1 (all dims) with ~zero noise; standardisation is identity."""
    model = EnsembleDynamics(obs_dim, 1, n_members=n_members, n_elites=n_elites, hidden=8, n_layers=1,
                             weight_decay=(0.0, 0.0))
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.zero_()
            layer.bias.zero_()
        for k in range(n_members):
            model.net.out.bias[k, 0, :obs_dim] = k + 1.0
        model.net.out.bias[:, 0, obs_dim:] = -100.0        # log-variance -> its lower bound (-10)
    return model.eval()


def test_step_uses_a_random_elite_per_sample() -> None:
    model = constant_model().to(DEVICE)
    model.elites.copy_(torch.tensor([0, 2, 3]))
    obs = torch.zeros(3000, 3, device=DEVICE)
    nxt, reward = model.step(obs, torch.zeros(3000, 1, device=DEVICE))
    assert reward is None and nxt.device.type == DEVICE
    chosen = nxt[:, 0].round().long()
    assert set(chosen.unique().tolist()) == {1, 3, 4}           # member k -> delta k + 1; member 1 is no elite
    counts = torch.bincount(chosen, minlength=5)[[1, 3, 4]].float()
    assert (counts / 3000 - 1 / 3).abs().max() < 0.05
    assert (nxt - nxt.round()).abs().max() < 0.05               # Gaussian draw with std e^-5
    odd, _ = model.step(obs[:7], torch.zeros(7, 1, device=DEVICE))   # batch not a multiple of the elites
    assert odd.shape == (7, 3)


def test_log_prob_is_the_elite_mixture_and_differentiable() -> None:
    torch.manual_seed(0)
    model = EnsembleDynamics(3, 2, **SMALL)
    with torch.no_grad():
        model.in_std.fill_(2.0)
        model.target_mean.fill_(0.1)
        model.target_std.fill_(0.5)
    obs, act = torch.randn(6, 3), torch.randn(6, 2)
    nxt = obs + 0.3 * torch.randn(6, 3)
    lp = model.log_prob(obs, act, nxt)
    mean, logvar = model(model.normalize_inputs(obs, act), model.elites)
    raw_mean = obs + mean * 0.5 + 0.1
    raw_std = torch.exp(0.5 * logvar) * 0.5
    dens = torch.distributions.Normal(raw_mean, raw_std).log_prob(nxt).sum(-1).exp().mean(0)
    torch.testing.assert_close(lp, dens.log())
    lp.sum().backward()
    assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0 for layer in model.layers)


# -- rollouts --------------------------------------------------------------------------------
def forbid_host_transfers(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("rollout moved data to the host")
    for name in ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_rollout_stops_terminated_branches_on_device(monkeypatch: pytest.MonkeyPatch) -> None:
    model = constant_model(n_members=1, n_elites=1).to(DEVICE)   # delta = +1 on every dim
    start = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [-5.0, 0, 0]], device=DEVICE)
    term = lambda o, a, n: n[:, 0] > 2.5
    seen_devices = []

    def policy(o: torch.Tensor) -> torch.Tensor:
        seen_devices.append(o.device.type)
        return torch.zeros(o.shape[0], 1, device=o.device)
    with monkeypatch.context() as m:
        forbid_host_transfers(m)
        out = rollout(model, policy, start, 4, term, chunk_size=2)
    assert set(seen_devices) == {DEVICE} and all(v.device.type == DEVICE for v in out.values())
    assert set(out) == {"obs", "act", "next_obs", "terminal"}
    # start 0 -> 1, 2, 3 (terminal): 3 rows; start 2 -> 3 (terminal): 1 row; start -5 -> 4 steps alive
    first = out["obs"][:, 0].round()
    assert sorted(first.tolist()) == sorted([0, 1, 2, 2, -5, -4, -3, -2])
    terminal_obs = out["next_obs"][out["terminal"] == 1][:, 0].round().tolist()
    assert sorted(terminal_obs) == [3.0, 3.0]
    assert out["terminal"].dtype == torch.float32 and len(out["terminal"]) == 8


def test_rollout_drops_non_finite_states_and_applies_state_bound() -> None:
    model = constant_model(n_members=1, n_elites=1)
    with torch.no_grad():
        model.net.out.bias[0, 0, 0] = 40.0            # delta = 40 on dim 0
    start = torch.tensor([[0.0, 0, 0], [float("nan"), 0, 0]])
    out = rollout(model, lambda o: torch.zeros(len(o), 1), start, 5,
                  make_termination_fn("Anything-v0", "bounds", 100.0))
    # start 0: 40, 80 alive, 120 out of bounds (terminal); the NaN start never yields a transition
    assert out["next_obs"][:, 0].round().tolist() == [40.0, 80.0, 120.0]
    assert out["terminal"].tolist() == [0.0, 0.0, 1.0]


# -- checkpoints -------------------------------------------------------------------------------
def test_save_load_roundtrip_and_clear_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EnsembleDynamics(4, 2, **SMALL)
    model.elites.copy_(torch.tensor([0, 2]))
    save_dynamics(model, tmp_path / "model.pt", termination={"env_id": "Hopper-v5", "mode": "auto", "obs_bound": 100.0})
    loaded = load_dynamics(tmp_path / "model.pt", DEVICE)
    assert loaded.elites.tolist() == [0, 2] and loaded.termination["env_id"] == "Hopper-v5"
    obs, act, nxt = torch.randn(5, 4), torch.randn(5, 2), torch.randn(5, 4)
    torch.testing.assert_close(loaded.log_prob(obs.to(DEVICE), act.to(DEVICE), nxt.to(DEVICE)).cpu(),
                               model.log_prob(obs, act, nxt))

    with pytest.raises(ArtefactError, match="not found; run `dvc repro dynamics`"):
        load_dynamics(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ArtefactError, match="cannot load"):
        load_dynamics(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ArtefactError, match="not a dynamics checkpoint"):
        load_dynamics(tmp_path / "other.pt")
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    ckpt["config"]["hidden"] = 64
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(ArtefactError, match="does not match"):
        load_dynamics(tmp_path / "mismatch.pt")


# -- held-out episodes and the multi-step check ------------------------------------------------
def test_heldout_episodes_and_multistep_error(hopper: EpisodeDataset) -> None:
    train, held = split_heldout_episodes(hopper, 3, 5, seed=0)
    assert held.n_episodes == 3 and train.n_transitions + held.n_transitions == hopper.n_transitions
    assert (held.episode_lengths >= 5).all()
    single = hopper.select_episodes([0])
    assert split_heldout_episodes(single, 3, 5, seed=0)[1] is None      # keep at least one episode
    torch.manual_seed(0)
    d = train.to_torch()
    model = EnsembleDynamics(11, 3, **SMALL)
    fit_dynamics(model, d["obs"], d["act"], d["next_obs"], max_epochs=8, patience=8, progress=False)
    ms = multistep_error(model, held, 5)
    assert ms["windows"] == int((held.episode_lengths - 4).sum())
    assert len(ms["mse_per_step"]) == 5 and ms["mse"] == ms["mse_per_step"][-1]
    assert ms["mse"] < ms["baseline_mse"]


# -- the stage ---------------------------------------------------------------------------------
def load_stage_module():
    spec = importlib.util.spec_from_file_location("dynamics_stage", ROOT / "stages" / "dynamics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_PARAMS = """device: cpu
env:
  id: {env_id}
dynamics:
  n_members: 3
  n_elites: 2
  hidden: 32
  n_layers: 2
  weight_decay: [1.0e-5, 1.0e-5, 1.0e-5]
  max_epochs: 3
  max_epoch_steps: 5
  multistep_episodes: 2
data:
  expert:
    add_to_suboptimal: {add}
"""


def stage_dir(tmp_path: Path, hopper: EpisodeDataset, env_id: str = "Hopper-v5", add: str = "true") -> Path:
    (tmp_path / "params.yaml").write_text(TINY_PARAMS.format(env_id=env_id, add=add))
    expert = hopper.select_episodes([0, 1])
    expert.save(tmp_path / "data/ingested/expert.h5")
    hopper.select_episodes(list(range(2, hopper.n_episodes))).save(tmp_path / "data/ingested/suboptimal.h5")
    return tmp_path


def run_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    stage = load_stage_module()
    try:
        run_stage(stage.main)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_stage_writes_model_metrics_and_curve(tmp_path: Path, hopper: EpisodeDataset,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, err = run_in_process(stage_dir(tmp_path, hopper), monkeypatch, capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "data/dynamics/details.json").read_text())
    assert len(metrics["elites"]) == 2 and len(metrics["holdout_mse_members"]) == 3
    assert math.isfinite(metrics["holdout_mse"]) and metrics["epochs"] == 3
    assert metrics["multistep"]["episodes"] == 2 and metrics["multistep"]["horizon"] == 5
    # add_to_suboptimal: the sources and the expert episodes, each once
    assert metrics["train_transitions"] + metrics["holdout_transitions"] + \
        int(metrics["multistep"]["windows"]) + 4 * 2 == hopper.n_transitions
    compared = json.loads((tmp_path / "data/dynamics/metrics.json").read_text())
    assert compared == {"holdout_mse": metrics["holdout_mse"], "multistep_mse": metrics["multistep"]["mse"],
                        "multistep_baseline_mse": metrics["multistep"]["baseline_mse"]}
    curve = (tmp_path / "data/dynamics/curve.tsv").read_text().splitlines()
    assert curve[0].split("\t")[:4] == ["epoch", "step", "train_loss", "holdout_mse"] and len(curve) == 4
    model = load_dynamics(tmp_path / "data/dynamics/model.pt")
    fn = make_termination_fn(**model.termination)
    start = torch.as_tensor(hopper.observations[:50])
    out = rollout(model, lambda o: torch.zeros(len(o), 3), start, 3, fn)
    assert 0 < len(out["obs"]) <= 150


def test_stage_adds_the_expert_episodes_only_when_asked(tmp_path: Path, hopper: EpisodeDataset,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    stage_dir(tmp_path, hopper)
    monkeypatch.chdir(tmp_path)
    stage = load_stage_module()
    assert stage.training_pool(True).n_transitions == hopper.n_transitions       # sources + expert
    expert_n = hopper.select_episodes([0, 1]).n_transitions
    assert stage.training_pool(False).n_transitions == hopper.n_transitions - expert_n


def test_stage_rejects_bad_upstream_artefacts(tmp_path: Path, hopper: EpisodeDataset,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    stage_dir(tmp_path, hopper)
    (tmp_path / "data/ingested/suboptimal.h5").write_bytes(b"garbage")
    code, err = run_in_process(tmp_path, monkeypatch, capsys)
    assert code == 1 and "suboptimal.h5: cannot read as hdf5" in err

    EpisodeDataset(np.zeros((200, 5), np.float32), np.zeros((200, 3), np.float32), np.zeros(200, np.float32),
                   np.zeros((200, 5), np.float32), np.zeros(200, bool), np.zeros(200, bool),
                   np.array([0, 200])).save(tmp_path / "data/ingested/suboptimal.h5")
    code, err = run_in_process(tmp_path, monkeypatch, capsys)
    assert code == 1 and "obs/act dims" in err and "dvc repro ingest" in err

    stage_dir(tmp_path, hopper, env_id="Pendulum-v1")
    code, err = run_in_process(tmp_path, monkeypatch, capsys)
    assert code == 1 and "no termination rule" in err and "'bounds'" in err
    assert not (tmp_path / "data/dynamics/model.pt").exists()


def test_stage_without_data_exits_nonzero_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("device: cpu\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "stages/dynamics.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "error: data/ingested/expert.h5: canonical dataset not found; run `dvc repro ingest`" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stage_rejects_inconsistent_dynamics_params(tmp_path: Path, hopper: EpisodeDataset,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    stage_dir(tmp_path, hopper)
    params = (tmp_path / "params.yaml").read_text().replace("  n_layers: 2\n", "  n_layers: 3\n")
    (tmp_path / "params.yaml").write_text(params)
    code, err = run_in_process(tmp_path, monkeypatch, capsys)
    assert code == 1 and "'dynamics.weight_decay' must be a list of dynamics.n_layers + 1 = 4 numbers" in err
