"""The canonical EpisodeDataset: episode bookkeeping, selection, concatenation, save / load."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.d4rl import read_d4rl
from pipeline.datasets import ARRAYS, EpisodeDataset
from pipeline.errors import DatasetError


def toy(lengths: list[int], terminated: list[bool], obs_dim: int = 2) -> EpisodeDataset:
    """Episodes whose transition t carries reward t (so returns are easy to check)."""
    n = sum(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    terminal, timeout = np.zeros(n, bool), np.zeros(n, bool)
    terminal[starts[1:] - 1] = terminated
    timeout[starts[1:] - 1] = ~np.asarray(terminated)
    obs = np.arange(n * obs_dim, dtype=np.float32).reshape(n, obs_dim)
    return EpisodeDataset(obs, np.zeros((n, 1), np.float32), np.arange(n, dtype=np.float32), obs + 1,
                          terminal, timeout, episode_starts=starts, meta={"source": "toy"})


def test_episode_bookkeeping():
    ds = toy([3, 2, 4], [True, False, False])
    assert (ds.n_episodes, ds.n_transitions, ds.obs_dim, ds.act_dim) == (3, 9, 2, 1)
    assert ds.episode_lengths.tolist() == [3, 2, 4]
    assert ds.episode_returns().tolist() == [0 + 1 + 2, 3 + 4, 5 + 6 + 7 + 8]
    assert ds.episode_terminated().tolist() == [True, False, False]
    assert ds.episode_ids().tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    summary = ds.summary()
    assert summary["episodes"] == 3 and summary["transitions"] == 9 and summary["terminated_episodes"] == 1
    assert summary["return_min"] == 3 and summary["return_max"] == 26


def test_select_and_concatenate_keep_episodes_whole():
    ds = toy([3, 2, 4], [True, False, False])
    picked = ds.select_episodes([2, 0])
    assert picked.episode_lengths.tolist() == [4, 3]
    assert picked.rewards.tolist() == [5, 6, 7, 8, 0, 1, 2]
    assert picked.episode_terminated().tolist() == [False, True]
    both = EpisodeDataset.concatenate([ds, picked])
    assert both.n_episodes == 5 and both.episode_starts.tolist() == [0, 3, 5, 9, 13, 16]
    np.testing.assert_array_equal(both.episode_returns(), np.concatenate([ds.episode_returns(),
                                                                          picked.episode_returns()]))
    assert ds.select_episodes([]).n_episodes == 0


def test_save_load_round_trip(tmp_path: Path, d4rl_file: Path):
    ds = read_d4rl(d4rl_file)
    ds.meta["action_low"] = [-1.0, -1.0, -1.0]
    ds.save(tmp_path / "sub" / "x.h5")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.h5"]  # no temp file left beside it
    back = EpisodeDataset.load(tmp_path / "sub" / "x.h5")
    for key in (*ARRAYS, "episode_starts"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ds, key), err_msg=key)
        assert getattr(back, key).dtype == getattr(ds, key).dtype
    assert back.meta == ds.meta


def test_load_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match="canonical dataset not found; run `dvc repro ingest`"):
        EpisodeDataset.load(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["observations"] = np.zeros((2, 2))
    with pytest.raises(DatasetError, match="not a canonical dataset, missing keys"):
        EpisodeDataset.load(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(DatasetError, match="cannot read as hdf5"):
        EpisodeDataset.load(tmp_path / "text.h5")


def test_to_torch_terminal_only(d4rl_file: Path):
    ds = read_d4rl(d4rl_file)
    t = ds.to_torch()
    assert set(t) == {"obs", "act", "rew", "next_obs", "terminal"}
    assert float(t["terminal"].sum()) == ds.terminals.sum()  # timeouts never become terminals
