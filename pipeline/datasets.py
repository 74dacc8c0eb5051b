"""The canonical dataset every stage reads: episodes of transitions.

`EpisodeDataset` holds transition-aligned arrays (obs, action, reward, next_obs,
terminal, timeout) plus episode offsets. A *terminal* transition ended the episode by
termination (no bootstrap); a *timeout* transition ended it by truncation (time limit
or end of recording; bootstrap from next_obs). A timeout is never a terminal.
Actions are stored in [-1, 1]; `meta["action_low"/"action_high"]` record the original
bounds so `a_env = low + (a + 1) / 2 * (high - low)`.

Readers: `pipeline.d4rl` (hdf5 files), `pipeline.minari_source` (Minari datasets),
`pipeline.embedded` (the default data); `pipeline.ingest` dispatches source strings to them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.errors import DatasetError
from pipeline.utils import atomic_write

ARRAYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def check_finite(arrays: dict[str, np.ndarray], where: str) -> None:
    """DatasetError naming the first NaN / Inf in any float array."""
    for key, value in arrays.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = np.argwhere(~np.isfinite(value))[0]
            raise DatasetError(f"{where}: '{key}' contains NaN or Inf (first at index {tuple(int(i) for i in bad)}); "
                               f"expected finite values everywhere")


def as_flags(value: np.ndarray, key: str, where: str) -> np.ndarray:
    """0/1 (or boolean) flags as a bool array; DatasetError otherwise."""
    if value.dtype != bool and not np.all((value == 0) | (value == 1)):
        raise DatasetError(f"{where}: '{key}' must hold 0/1 (or boolean) flags")
    return value.astype(bool)


@dataclass
class EpisodeDataset:
    observations: np.ndarray        # (N, obs_dim) float32
    actions: np.ndarray             # (N, act_dim) float32, in [-1, 1]
    rewards: np.ndarray             # (N,) float32, environment reward: audit and scoring only
    next_observations: np.ndarray   # (N, obs_dim) float32
    terminals: np.ndarray           # (N,) bool
    timeouts: np.ndarray            # (N,) bool
    episode_starts: np.ndarray      # (E + 1,) int64 offsets; episode i is [starts[i], starts[i+1])
    meta: dict = field(default_factory=dict)

    # -- shape ---------------------------------------------------------------------------
    @property
    def n_transitions(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def n_episodes(self) -> int:
        return int(self.episode_starts.shape[0] - 1)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_starts)

    def episode_returns(self) -> np.ndarray:
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts[:-1]) \
            if self.n_episodes else np.zeros(0)

    def episode_terminated(self) -> np.ndarray:
        """Per episode: did it end by termination?"""
        return self.terminals[self.episode_starts[1:] - 1] if self.n_episodes else np.zeros(0, bool)

    def episode_ids(self) -> np.ndarray:
        """Per transition: index of its episode."""
        return np.repeat(np.arange(self.n_episodes), self.episode_lengths)

    # -- building ------------------------------------------------------------------------
    @classmethod
    def from_flags(cls, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, next_obs: np.ndarray,
                   terminal: np.ndarray, timeout: np.ndarray, meta: dict) -> "EpisodeDataset":
        """Episodes end at each terminal or timeout; the caller guarantees the last row is one."""
        ends = np.flatnonzero(terminal | timeout)
        starts = np.concatenate([[0], ends + 1]).astype(np.int64)
        return cls(obs, act, rew, next_obs, terminal, timeout, episode_starts=starts, meta=meta)

    def select_episodes(self, indices: np.ndarray | list[int]) -> "EpisodeDataset":
        """A new dataset holding the given episodes in the given order."""
        indices = np.asarray(indices, dtype=np.int64)
        starts, lengths = self.episode_starts[indices], self.episode_lengths[indices]
        rows = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)]) if len(indices) else \
            np.zeros(0, np.int64)
        return EpisodeDataset(*(getattr(self, k)[rows] for k in ARRAYS),
                              episode_starts=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                              meta=dict(self.meta))

    @staticmethod
    def concatenate(parts: list["EpisodeDataset"], meta: dict | None = None) -> "EpisodeDataset":
        offsets = np.cumsum([0] + [p.n_transitions for p in parts])
        starts = np.concatenate([[0]] + [p.episode_starts[1:] + o for p, o in zip(parts, offsets)])
        return EpisodeDataset(*(np.concatenate([getattr(p, k) for p in parts]) for k in ARRAYS),
                              episode_starts=starts.astype(np.int64),
                              meta=meta if meta is not None else dict(parts[0].meta))

    def summary(self) -> dict:
        rets = self.episode_returns()
        return {"episodes": self.n_episodes, "transitions": self.n_transitions,
                "return_mean": float(rets.mean()) if len(rets) else float("nan"),
                "return_std": float(rets.std()) if len(rets) else float("nan"),
                "return_min": float(rets.min()) if len(rets) else float("nan"),
                "return_max": float(rets.max()) if len(rets) else float("nan"),
                "length_mean": float(self.episode_lengths.mean()) if self.n_episodes else float("nan"),
                "terminated_episodes": int(self.episode_terminated().sum()),
                "obs_dim": self.obs_dim, "act_dim": self.act_dim}

    def to_torch(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Transition tensors on ``device``: obs, act, rew, next_obs, terminal (float 0/1)."""
        f = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
        return {"obs": f(self.observations), "act": f(self.actions), "rew": f(self.rewards),
                "next_obs": f(self.next_observations), "terminal": f(self.terminals)}

    # -- canonical file ------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the canonical hdf5 file atomically; ``meta`` goes to a JSON attribute."""
        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                for k in ARRAYS:
                    f.create_dataset(k, data=getattr(self, k), track_times=False)
                f.create_dataset("episode_starts", data=self.episode_starts, track_times=False)
                f.attrs["meta"] = json.dumps(self.meta, sort_keys=True)
        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> "EpisodeDataset":
        """Read a canonical file written by `save` (an upstream artefact of the pipeline)."""
        path = Path(path)
        if not path.exists():
            raise DatasetError(f"{path}: canonical dataset not found; run `dvc repro ingest` first")
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in (*ARRAYS, "episode_starts") if k not in f]
                if missing:
                    raise DatasetError(f"{path}: not a canonical dataset, missing keys {missing}")
                arrays = {k: f[k][()] for k in (*ARRAYS, "episode_starts")}
                meta = json.loads(f.attrs.get("meta", "{}"))
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read as hdf5 ({exc})") from None
        return cls(**arrays, meta=meta)
