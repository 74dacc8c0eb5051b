"""Facts about the gymnasium environments: families, D4RL reference returns, spaces, action scaling.

Policies and datasets use actions in [-1, 1]^d; an environment's own bounds are [low, high]:
``to_env_action`` / ``to_unit_action`` convert between the two (the only place that formula lives).
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from pipeline.errors import ParamsError

# D4RL reference returns (random, expert) per family; identical for the v0 and v2 datasets.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


def env_family(env_id: str) -> str:
    """'Hopper-v5' -> 'hopper'; 'mujoco/Walker2d-v5' -> 'walker2d'; 'hopper-medium-v2' -> 'hopper'."""
    return env_id.rsplit("/", 1)[-1].split("-", 1)[0].lower()


def to_env_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """An action in [-1, 1]^d -> the environment's bounds [low, high]."""
    return low + (action + 1.0) * 0.5 * (high - low)


def to_unit_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The inverse of `to_env_action`: [low, high] -> [-1, 1]^d."""
    return 2.0 * (action - low) / (high - low) - 1.0


@dataclass(frozen=True)
class EnvSpaces:
    env_id: str
    obs_dim: int
    action_low: np.ndarray
    action_high: np.ndarray

    @property
    def act_dim(self) -> int:
        return int(self.action_low.shape[0])


def env_spaces(env_id: str) -> EnvSpaces:
    """Observation size and action bounds of ``gym.make(env_id)`` (flat Box spaces, bounded actions)."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as exc:
        raise ParamsError(f"params.yaml: 'env.id' {env_id!r} is not a usable gymnasium environment ({exc})") from None
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
            and isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1):
        raise ParamsError(f"params.yaml: 'env.id' {env_id!r} must have flat Box observation and action spaces, "
                          f"got {obs_space} and {act_space}")
    low, high = act_space.low.astype(np.float64), act_space.high.astype(np.float64)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ParamsError(f"params.yaml: 'env.id' {env_id!r} has unbounded actions {act_space}; "
                          f"cannot rescale them to [-1, 1]")
    return EnvSpaces(env_id, int(obs_space.shape[0]), low, high)
