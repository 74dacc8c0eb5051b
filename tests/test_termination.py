"""Termination rules vs gymnasium's own `terminated` flag, and the rule selection."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from pipeline.errors import ParamsError
from pipeline.termination import make_termination_fn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def env_transitions(env_id: str, episodes: int = 24, max_steps: int = 150, seed: int = 0,
                    **env_kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(obs, act, next_obs, terminated) from random / perturbed rollouts of a real environment.

    Odd episodes start with their joint velocities kicked (N(0, 3^2)) and every third
    episode uses saturated Gaussian actions, so falls and flips (terminations) happen.
    """
    env = gym.make(env_id, **env_kwargs)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    sim = env.unwrapped
    obs_l, act_l, next_l, term_l = [], [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        if ep % 2:
            sim.set_state(sim.data.qpos.copy(), sim.data.qvel + rng.normal(0.0, 3.0, sim.model.nv))
            obs = sim._get_obs()
        for _ in range(max_steps):
            act = env.action_space.sample() if ep % 3 else np.clip(rng.normal(0, 1.5, env.action_space.shape), -1, 1)
            next_obs, _, terminated, truncated, _ = env.step(act)
            obs_l.append(obs), act_l.append(act), next_l.append(next_obs), term_l.append(terminated)
            obs = next_obs
            if terminated or truncated:
                break
    env.close()
    return np.array(obs_l), np.array(act_l), np.array(next_l), np.array(term_l)


@pytest.mark.parametrize("env_id, kwargs, must_terminate", [
    ("Hopper-v5", {}, True),
    ("Walker2d-v5", {}, True),
    ("HalfCheetah-v5", {}, False),
    ("Ant-v5", {}, True),
    ("Ant-v5", {"include_cfrc_ext_in_observation": False}, True),   # 27-dim layout (v4 default)
])
def test_rule_matches_env_terminated_flag(env_id: str, kwargs: dict, must_terminate: bool) -> None:
    obs, act, next_obs, terminated = env_transitions(env_id, **kwargs)
    # float64 so that values at a threshold compare exactly as in the environment
    t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=DEVICE)
    fn = make_termination_fn(env_id, "auto", 100.0, obs_dim=obs.shape[1])
    pred = fn(t(obs), t(act), t(next_obs))
    assert pred.dtype == torch.bool and pred.shape == (len(terminated),) and pred.device.type == DEVICE
    mismatch = np.flatnonzero(pred.cpu().numpy() != terminated)
    assert len(mismatch) == 0, f"{env_id}: {len(mismatch)} of {len(terminated)} flags differ, e.g. rows {mismatch[:5]}"
    if must_terminate:
        assert 0 < terminated.sum() < len(terminated), "the rollouts must contain both alive and terminal steps"


def batch(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.tensor(rows, dtype=torch.float32, device=DEVICE)
    return x, torch.zeros(len(rows), 3, device=DEVICE), x


def test_hopper_checks_the_lower_state_bound() -> None:
    """The reference `np.abs(next_obs[:, 1:] < 100)` never checks > -100; gymnasium does."""
    fn = make_termination_fn("Hopper-v5", "auto", 1e6)   # bound far away: only the Hopper rule acts
    healthy = [1.25, 0.0] + [0.0] * 9
    low = healthy.copy()
    low[6] = -150.0
    high = healthy.copy()
    high[6] = 150.0
    at_height = healthy.copy()
    at_height[0] = 0.7
    assert fn(*batch([healthy, low, high, at_height])).tolist() == [False, True, True, True]


def test_boundaries_follow_gymnasium() -> None:
    walker = make_termination_fn("Walker2d-v5", "auto", 100.0)
    rows = [[h, a] + [0.0] * 15 for h, a in [(1.2, 0.0), (0.8, 0.0), (2.0, 0.0), (1.2, 1.0), (1.2, -0.99)]]
    assert walker(*batch(rows)).tolist() == [False, True, True, True, False]
    ant = make_termination_fn("Ant-v5", "auto", 100.0)        # Ant's z range is inclusive
    rows = [[z] + [0.0] * 104 for z in (0.2, 1.0, 0.19, 1.01)]
    assert ant(*batch(rows)).tolist() == [False, False, True, True]


@pytest.mark.parametrize("env_id, dim", [("Hopper-v5", 11), ("Walker2d-v5", 17), ("HalfCheetah-v5", 17),
                                         ("Ant-v5", 105), ("MyRobot-v0", 4)])
def test_nan_and_out_of_bounds_terminate(env_id: str, dim: int) -> None:
    mode = "bounds" if env_id == "MyRobot-v0" else "auto"
    fn = make_termination_fn(env_id, mode, 50.0)
    base = [1.0, 0.0] + [0.0] * (dim - 2)
    nan, inf, big = list(base), list(base), list(base)
    nan[-1], inf[-1], big[-1] = float("nan"), float("inf"), 60.0
    assert fn(*batch([base, nan, inf, big])).tolist() == [False, True, True, True]


def test_none_never_terminates() -> None:
    fn = make_termination_fn("Hopper-v5", "none", 1.0)
    assert not fn(*batch([[0.0] * 11, [float("nan")] * 11, [1e9] * 11])).any()


def test_unknown_env_with_auto_asks_for_a_choice() -> None:
    with pytest.raises(ParamsError, match="env.termination.*'bounds'.*'none'"):
        make_termination_fn("Pendulum-v1", "auto", 100.0)
    with pytest.raises(ValueError, match="auto, none or bounds"):   # params.yaml values: checked by config
        make_termination_fn("Hopper-v5", "sometimes", 100.0)


def test_wrong_observation_size_is_rejected() -> None:
    with pytest.raises(ParamsError, match="observations of size 11 but the data has 17"):
        make_termination_fn("Hopper-v5", "auto", 100.0, obs_dim=17)
    for dim in (105, 27, 111):
        make_termination_fn("Ant-v5", "auto", 100.0, obs_dim=dim)
    make_termination_fn("Whatever-v0", "bounds", 100.0, obs_dim=3)


def test_env_id_spellings() -> None:
    for env_id in ("Hopper-v4", "mujoco/Hopper-v5", "hopper-medium-v2"):
        fn = make_termination_fn(env_id, "auto", 100.0)
        assert fn(*batch([[0.5, 0.0] + [0.0] * 9])).tolist() == [True]
