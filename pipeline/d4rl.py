"""D4RL-layout hdf5 files (``d4rl:<path.hdf5>``) -> `EpisodeDataset`, read with h5py (no `d4rl` package).

Episode boundaries and flags
  * A transition is *terminal* when the episode ended by termination, *timeout* when it
    ended by truncation (time limit, or the recording stopped). A timeout is never a
    terminal; a D4RL row flagged as both is a terminal (the env did terminate).
  * D4RL stores one row per transition. With `next_observations` in the file every row is
    kept. Without it, next_obs[t] = obs[t + 1], which is wrong at an episode's end:
      - the last row of a timed-out (or unfinished) episode is DROPPED, since its successor
        is unknown, and the row before it becomes the episode's timeout (a D4RL
        `qlearning_dataset` convention); a 1-row timed-out episode disappears;
      - a terminal row is kept (it carries the termination) with next_obs = obs, since the
        successor is unknown and no value target reads it. `meta["next_observations"]`
        says "derived" in that case.
  * D4RL v0 files have no `timeouts`: episodes are split after every `max_episode_steps`
    rows that did not terminate.
  * The final episode of a recording that ends with neither flag counts as truncated.

`meta["content_hash"]` is the sha256 of the file.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pipeline.datasets import EpisodeDataset, as_flags, check_finite
from pipeline.errors import DatasetError
from pipeline.utils import content_hash

D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")


def read_d4rl(path: str | Path, max_episode_steps: int = 1000) -> EpisodeDataset:
    """Read a D4RL-layout hdf5 file (see the module docstring for episode ends).

    ``max_episode_steps`` (>= 1, params.yaml ``data.max_episode_steps``) splits v0 files without `timeouts`.
    """
    assert max_episode_steps >= 1, max_episode_steps
    path = Path(path).expanduser()
    where = str(path)
    if not path.is_file():
        raise DatasetError(f"{where}: file not found (expected a D4RL-layout .hdf5 file)")
    if not h5py.is_hdf5(path):
        raise DatasetError(f"{where}: not an HDF5 file (expected a D4RL-layout .hdf5 file with "
                           f"{', '.join(D4RL_REQUIRED)} and timeouts)")
    try:
        with h5py.File(path, "r") as f:
            raw = _read_arrays(f, where)
            source_meta = _metadata(f)
    except (OSError, RuntimeError, KeyError) as exc:  # not ValueError: DatasetError is one
        raise DatasetError(f"{where}: truncated or corrupt HDF5 file, cannot read it ({exc})") from None
    ds = _episodes(raw, max_episode_steps, where)
    ds.meta.update(source=f"d4rl:{path}", content_hash=content_hash([path]), format="d4rl", **source_meta)
    return ds


def _read_arrays(f: h5py.File, where: str) -> dict[str, np.ndarray]:
    missing = [k for k in D4RL_REQUIRED if not isinstance(f.get(k), h5py.Dataset)]
    if missing:
        found = sorted(f.keys())
        raise DatasetError(f"{where}: missing required key(s) {', '.join(missing)}; a D4RL file has "
                           f"{', '.join(D4RL_REQUIRED)} (+ timeouts, next_observations); found: "
                           f"{', '.join(found[:12]) + (' ...' if len(found) > 12 else '') or 'nothing'}")
    keys = [*D4RL_REQUIRED] + [k for k in ("timeouts", "next_observations") if isinstance(f.get(k), h5py.Dataset)]
    lengths = {k: (f[k].shape[0] if f[k].ndim else 0) for k in keys}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{where}: arrays have different lengths ("
                           + ", ".join(f"{k} {n}" for k, n in lengths.items())
                           + "); expected one row per transition in every array")
    raw = {k: f[k][()] for k in keys}
    for key, value in raw.items():
        if value.dtype.kind not in "biuf":
            raise DatasetError(f"{where}: '{key}' has dtype {value.dtype}, expected numbers")
    for key in ("observations", "actions", "next_observations"):
        if key in raw and (raw[key].ndim != 2 or raw[key].shape[1] < 1):
            raise DatasetError(f"{where}: '{key}' has shape {raw[key].shape}, expected (transitions, dim)")
    for key in ("rewards", "terminals", "timeouts"):
        if key in raw:
            if raw[key].ndim == 2 and raw[key].shape[1] == 1:
                raw[key] = raw[key][:, 0]
            if raw[key].ndim != 1:
                raise DatasetError(f"{where}: '{key}' has shape {raw[key].shape}, expected (transitions,)")
    if "next_observations" in raw and raw["next_observations"].shape != raw["observations"].shape:
        raise DatasetError(f"{where}: 'next_observations' has shape {raw['next_observations'].shape} but "
                           f"'observations' has {raw['observations'].shape}; expected the same")
    return raw


def _metadata(f: h5py.File) -> dict:
    """Scalar entries of the optional `metadata` group (e.g. algorithm, ref scores)."""
    group = f.get("metadata")
    if not isinstance(group, h5py.Group):
        return {}
    found: dict = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.shape == ():
            value = obj[()]
            value = value.decode(errors="replace") if isinstance(value, bytes) else value
            found[name] = value.item() if isinstance(value, np.generic) else value
    group.visititems(visit)
    return {"source_metadata": found} if found else {}


def _episodes(raw: dict[str, np.ndarray], max_episode_steps: int, where: str) -> EpisodeDataset:
    n = raw["rewards"].shape[0]
    if n == 0:
        raise DatasetError(f"{where}: the dataset is empty (0 transitions)")
    obs = np.asarray(raw["observations"], np.float32)
    act = np.asarray(raw["actions"], np.float32)
    rew = np.asarray(raw["rewards"], np.float32)
    next_obs = np.asarray(raw["next_observations"], np.float32) if "next_observations" in raw else None
    check_finite({"observations": obs, "actions": act, "rewards": rew,
                  **({"next_observations": next_obs} if next_obs is not None else {})}, where)
    terminal = as_flags(raw["terminals"], "terminals", where)

    if "timeouts" in raw:
        timeout = as_flags(raw["timeouts"], "timeouts", where) & ~terminal
    else:
        # v0: split every max_episode_steps rows counted from the last terminal (or split).
        seg_start = np.zeros(n, np.int64)
        after_terminal = np.flatnonzero(terminal[:-1]) + 1
        seg_start[after_terminal] = after_terminal
        seg_start = np.maximum.accumulate(seg_start)
        step_in_segment = np.arange(n) - seg_start
        timeout = ((step_in_segment + 1) % max_episode_steps == 0) & ~terminal
    unfinished = not (terminal[-1] or timeout[-1])
    timeout[-1] |= unfinished

    dropped = 0
    if next_obs is None:
        next_obs = np.empty_like(obs)
        next_obs[:-1] = obs[1:]
        next_obs[terminal] = obs[terminal]
        ends = terminal | timeout
        first = np.concatenate([[True], ends[:-1]])
        drop = np.flatnonzero(timeout)
        has_prev = drop[~first[drop]]
        timeout[has_prev - 1] = True
        keep = np.ones(n, bool)
        keep[drop] = False
        dropped = int(drop.size)
        obs, act, rew, next_obs = obs[keep], act[keep], rew[keep], next_obs[keep]
        terminal, timeout = terminal[keep], timeout[keep]
        if obs.shape[0] == 0:
            raise DatasetError(f"{where}: the dataset is empty after dropping the last transition of each timed-out "
                               f"episode (no next_observations in the file)")

    meta = {"has_timeouts": "timeouts" in raw, "next_observations": "file" if "next_observations" in raw else "derived",
            "dropped_transitions": dropped, "unfinished_last_episode": bool(unfinished)}
    if "timeouts" not in raw:
        meta["max_episode_steps"] = int(max_episode_steps)
    return EpisodeDataset.from_flags(obs, act, rew, next_obs, terminal, timeout, meta)
