"""D4RL and Minari readers (pipeline.d4rl, pipeline.minari_source) on files written here, episode ends,
selection, env checks and bad input (pipeline.ingest, pipeline.envs)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import MINARI_ID, cut_episode, rollout_episodes, write_d4rl
from pipeline import minari_source
from pipeline.config import DataConfig, ExpertDataConfig, SuboptimalDataConfig
from pipeline.d4rl import read_d4rl
from pipeline.datasets import ARRAYS, EpisodeDataset
from pipeline.envs import env_spaces
from pipeline.errors import DatasetError, ParamsError
from pipeline.ingest import conform_to_env, ingest, read_source, select_expert, write_ingested
from pipeline.minari_source import read_minari
from pipeline.utils import content_hash


def assert_same(a: EpisodeDataset, b: EpisodeDataset) -> None:
    for key in ARRAYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    np.testing.assert_array_equal(a.episode_starts, b.episode_starts)


def assert_within_episode_alignment(ds: EpisodeDataset) -> None:
    """next_obs[t] == obs[t + 1] for every t that is not the last step of its episode."""
    inner = np.ones(ds.n_transitions, bool)
    inner[ds.episode_starts[1:] - 1] = False
    rows = np.flatnonzero(inner)
    np.testing.assert_array_equal(ds.next_observations[rows], ds.observations[rows + 1])


def data_config(expert: str, suboptimal: list[str], **expert_options) -> DataConfig:
    return DataConfig(expert=ExpertDataConfig(source=expert, **expert_options),
                      suboptimal=SuboptimalDataConfig(sources=suboptimal))


# -- readers --------------------------------------------------------------------------------
def test_d4rl_reader_episodes_and_flags(d4rl_file: Path, hopper_episodes: list[dict]):
    ds = read_d4rl(d4rl_file)
    assert ds.n_episodes == len(hopper_episodes)
    assert ds.episode_lengths.tolist() == [len(e["actions"]) for e in hopper_episodes]
    assert ds.episode_terminated().tolist() == [bool(e["terminations"][-1]) for e in hopper_episodes]
    ends = ds.episode_starts[1:] - 1
    assert (ds.terminals | ds.timeouts).sum() == ds.n_episodes          # flags only at episode ends
    assert (ds.terminals[ends] ^ ds.timeouts[ends]).all()                # exactly one, never both
    assert (ds.obs_dim, ds.act_dim) == (11, 3)
    assert ds.observations.dtype == np.float32 and ds.terminals.dtype == bool
    assert_within_episode_alignment(ds)
    for k, e in enumerate(hopper_episodes):  # the last next_obs is the episode's final observation
        np.testing.assert_array_equal(ds.next_observations[ends[k]], e["observations"][-1].astype(np.float32))
    np.testing.assert_allclose(ds.episode_returns(), [e["rewards"].astype(np.float32).sum() for e in hopper_episodes],
                               rtol=1e-6)
    assert ds.meta["format"] == "d4rl" and ds.meta["next_observations"] == "file"
    assert ds.meta["content_hash"] == content_hash([d4rl_file]) and len(ds.meta["content_hash"]) == 64
    assert ds.meta["source_metadata"]["algorithm"] == "uniform random"


def test_minari_reader_t_plus_one_alignment(minari_dataset: str, hopper_episodes: list[dict]):
    ds = read_minari(minari_dataset)
    assert ds.n_episodes == len(hopper_episodes)
    for k, e in enumerate(hopper_episodes):
        rows = slice(ds.episode_starts[k], ds.episode_starts[k + 1])
        np.testing.assert_array_equal(ds.observations[rows], e["observations"][:-1].astype(np.float32))
        np.testing.assert_array_equal(ds.next_observations[rows], e["observations"][1:].astype(np.float32))
        np.testing.assert_array_equal(ds.actions[rows], e["actions"])
        assert ds.terminals[rows][-1] == e["terminations"][-1] and ds.timeouts[rows][-1] == e["truncations"][-1]
    assert_within_episode_alignment(ds)
    assert ds.meta["format"] == "minari" and ds.meta["ref_max_score"] == 100.0
    assert len(ds.meta["content_hash"]) == 64


def test_same_episodes_in_both_formats_read_identically(d4rl_file: Path, minari_dataset: str):
    assert_same(read_d4rl(d4rl_file), read_minari(minari_dataset))


def test_d4rl_without_next_observations_drops_timeout_last_transition(make_d4rl, hopper_episodes: list[dict]):
    full = read_d4rl(make_d4rl(hopper_episodes, "full.hdf5"))
    ds = read_d4rl(make_d4rl(hopper_episodes, "no_next.hdf5", next_observations=False))
    truncated = ~full.episode_terminated()
    assert ds.n_episodes == full.n_episodes
    np.testing.assert_array_equal(ds.episode_lengths, full.episode_lengths - truncated)
    assert ds.meta["dropped_transitions"] == truncated.sum() and ds.meta["next_observations"] == "derived"
    ends = ds.episode_starts[1:] - 1
    np.testing.assert_array_equal(ds.timeouts[ends], truncated)        # the new last row is the timeout
    np.testing.assert_array_equal(ds.terminals[ends], ~truncated)
    assert not (ds.terminals & ds.timeouts).any()
    assert_within_episode_alignment(ds)
    for k in np.flatnonzero(truncated):  # the kept rows are the full episode minus its last transition
        a, b = ds.episode_starts[k], full.episode_starts[k]
        n = ds.episode_lengths[k]
        np.testing.assert_array_equal(ds.next_observations[a:a + n], full.next_observations[b:b + n])
    terminal_rows = np.flatnonzero(ds.terminals)  # successor unknown: next_obs = obs, never the next episode
    np.testing.assert_array_equal(ds.next_observations[terminal_rows], ds.observations[terminal_rows])


@pytest.mark.parametrize("next_observations", [True, False])
def test_d4rl_v0_without_timeouts_splits_at_max_episode_steps(make_d4rl, hopper_episodes, next_observations):
    v2 = read_d4rl(make_d4rl(hopper_episodes, "v2.hdf5", next_observations=next_observations))
    path = make_d4rl(hopper_episodes, "v0.hdf5", timeouts=False, next_observations=next_observations)
    with h5py.File(path) as f:
        assert "timeouts" not in f
    v0 = read_d4rl(path, max_episode_steps=40)  # the rollouts' time limit
    assert_same(v0, v2)
    assert v0.meta["has_timeouts"] is False and v0.meta["max_episode_steps"] == 40
    assert read_d4rl(path, max_episode_steps=20).n_episodes > v0.n_episodes


def test_d4rl_timeout_and_terminal_on_one_row_is_terminal(tmp_path: Path, hopper_episodes):
    path = write_d4rl(tmp_path / "both.hdf5", hopper_episodes)
    with h5py.File(path, "a") as f:
        terminals, timeouts = f["terminals"][()], f["timeouts"][()]
        row = int(np.flatnonzero(terminals)[0])
        timeouts[row] = True
        f["timeouts"][...] = timeouts
    ds = read_d4rl(path)
    assert ds.terminals.sum() == terminals.sum() and not (ds.terminals & ds.timeouts).any()


def test_unfinished_final_episode_counts_as_truncated(make_d4rl, make_minari, hopper_episodes):
    episodes = hopper_episodes[:3] + [cut_episode(hopper_episodes[3], 10)]
    for ds in (read_d4rl(make_d4rl(episodes)), read_minari(make_minari(episodes, "test/hopper/cut-v0"))):
        assert ds.n_episodes == 4 and ds.episode_lengths[-1] == 10
        assert ds.timeouts[-1] and not ds.terminals[-1]
    assert read_d4rl(make_d4rl(episodes, "x.hdf5")).meta["unfinished_last_episode"] is True
    no_next = read_d4rl(make_d4rl(episodes, "y.hdf5", next_observations=False))
    assert no_next.episode_lengths[-1] == 9 and no_next.timeouts[-1]


# -- dispatch -------------------------------------------------------------------------------
def test_read_source_dispatch(d4rl_file: Path, minari_dataset: str, monkeypatch):
    import pipeline.embedded

    def no_embedded(name):
        raise AssertionError("embedded data must not be touched for other schemes")
    monkeypatch.setattr(pipeline.embedded, "ensure_embedded", no_embedded)
    ds = read_source(f"d4rl:{d4rl_file}")
    assert ds.meta["source"] == f"d4rl:{d4rl_file}"
    assert read_source(f"minari:{minari_dataset}").meta["source"] == f"minari:{minari_dataset}"
    for bad in ("hdf5:/x.hdf5", "/plain/path.hdf5", "d4rl:", "Minari:x"):
        with pytest.raises(ParamsError, match="d4rl:<path.hdf5>, minari:<dataset-id> or embedded:<name>"):
            read_source(bad)


def test_embedded_reads_minari_under_its_own_root(minari_dataset: str, minari_root: Path, monkeypatch):
    import pipeline.embedded

    calls = []

    def fake_ensure(name):
        calls.append(name)
        return minari_dataset, minari_root
    monkeypatch.setattr(pipeline.embedded, "ensure_embedded", fake_ensure)
    monkeypatch.setenv("MINARI_DATASETS_PATH", "/nonexistent-minari-root")
    ds = read_source("embedded:hopper/expert")
    assert calls == ["hopper/expert"] and ds.meta["source"] == "embedded:hopper/expert"
    assert ds.meta["minari_id"] == minari_dataset and ds.n_episodes == 12
    assert os.environ["MINARI_DATASETS_PATH"] == "/nonexistent-minari-root"  # restored


# -- selection ------------------------------------------------------------------------------
@pytest.mark.parametrize("selection", ["random", "first", "best"])
@pytest.mark.parametrize("skip_terminated", [False, True])
def test_selection_is_the_same_in_both_formats(d4rl_file, minari_dataset, selection, skip_terminated):
    picks = []
    for ds in (read_d4rl(d4rl_file), read_minari(minari_dataset)):
        chosen_ds, chosen = select_expert(ds, 3, selection, seed=7, skip_terminated=skip_terminated)
        picks.append((chosen.tolist(), chosen_ds.episode_returns().tolist()))
        assert chosen_ds.n_episodes == 3
        if skip_terminated:
            assert not chosen_ds.episode_terminated().any()
    assert picks[0] == picks[1]


def test_selection_semantics(d4rl_file):
    ds = read_d4rl(d4rl_file)
    returns = ds.episode_returns()
    assert select_expert(ds, 4, "first", 0)[1].tolist() == [0, 1, 2, 3]
    assert set(select_expert(ds, 4, "best", 0)[1]) == set(np.argsort(-returns)[:4])
    a, b, c = (select_expert(ds, 4, "random", s)[1].tolist() for s in (0, 0, 1))
    assert a == b and a != c
    kept, idx = select_expert(ds, 2, "first", 0, skip_terminated=True)
    assert idx.tolist() == np.flatnonzero(~ds.episode_terminated())[:2].tolist()
    np.testing.assert_array_equal(kept.observations[: kept.episode_lengths[0]],
                                  ds.observations[ds.episode_starts[idx[0]]:ds.episode_starts[idx[0] + 1]])


def test_n_trajectories_larger_than_available_says_how_many(d4rl_file):
    ds = read_d4rl(d4rl_file)
    with pytest.raises(ParamsError, match=r"'data.expert.n_trajectories' is 50 but .* has only 12 usable episodes"):
        select_expert(ds, 50, "random", 0)
    n_truncated = int((~ds.episode_terminated()).sum())
    with pytest.raises(ParamsError, match=rf"only {n_truncated} usable episodes \({12 - n_truncated} terminated"):
        select_expert(ds, n_truncated + 1, "first", 0, skip_terminated=True)


def test_zero_expert_episodes_after_filtering(make_d4rl, hopper_episodes):
    terminated = [e for e in hopper_episodes if e["terminations"][-1]]
    ds = read_d4rl(make_d4rl(terminated))
    with pytest.raises(DatasetError, match="no expert episodes left.*skip_terminated"):
        select_expert(ds, 1, "first", 0, skip_terminated=True)


# -- environment checks ---------------------------------------------------------------------
def test_hopper_actions_are_kept_and_bounds_recorded(d4rl_file):
    ds = read_d4rl(d4rl_file)
    out = conform_to_env(ds, env_spaces("Hopper-v5"), "expert")
    np.testing.assert_array_equal(out.actions, ds.actions)
    assert out.meta["action_low"] == [-1.0] * 3 and out.meta["action_high"] == [1.0] * 3
    assert out.meta["actions_rescaled"] is False


def test_actions_rescaled_when_env_bounds_differ(tmp_path):
    episodes = rollout_episodes("InvertedPendulum-v5", 3, seed=1, max_episode_steps=20)  # actions in [-3, 3]
    ds = read_d4rl(write_d4rl(tmp_path / "pendulum.hdf5", episodes))
    out = conform_to_env(ds, env_spaces("InvertedPendulum-v5"), "expert")
    assert out.meta["action_low"] == [-3.0] and out.meta["action_high"] == [3.0] and out.meta["actions_rescaled"]
    np.testing.assert_allclose(out.actions, ds.actions / 3.0, atol=1e-6)
    low, high = np.array(out.meta["action_low"]), np.array(out.meta["action_high"])
    np.testing.assert_allclose(low + (out.actions + 1) / 2 * (high - low), ds.actions, atol=1e-5)  # datasets.py rule


def test_actions_outside_bounds_are_rejected(make_d4rl, hopper_episodes):
    hopper_episodes[2]["actions"][5, 1] = 1.5
    ds = read_d4rl(make_d4rl(hopper_episodes))
    with pytest.raises(DatasetError, match=r"1 action values lie outside env.id Hopper-v5's action bounds.*dim 1, "
                                           r"value 1\.5"):
        conform_to_env(ds, env_spaces("Hopper-v5"), "expert")


def test_dims_must_match_env(d4rl_file):
    ds = read_d4rl(d4rl_file)
    with pytest.raises(DatasetError, match="observations have 11 dims and actions 3, but env.id Walker2d-v5 expects "
                                           "17 and 6"):
        conform_to_env(ds, env_spaces("Walker2d-v5"), "data.expert.source")


def test_unknown_env_id():
    with pytest.raises(ParamsError, match="'env.id' 'Hoppr-v5' is not a usable gymnasium environment"):
        env_spaces("Hoppr-v5")


# -- bad files ------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.hdf5: file not found \(expected a D4RL-layout"):
        read_d4rl(tmp_path / "nope.hdf5")


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "text.hdf5"
    path.write_text("observations,actions\n1,2\n")
    with pytest.raises(DatasetError, match=r"text\.hdf5: not an HDF5 file"):
        read_d4rl(path)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_truncated_or_corrupt_hdf5(d4rl_file: Path, damage: str):
    data = d4rl_file.read_bytes()
    d4rl_file.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:8] + bytes(200) + data[208:])
    with pytest.raises(DatasetError, match=rf"{d4rl_file.name}: truncated or corrupt HDF5 file"):
        read_d4rl(d4rl_file)


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals"])
def test_missing_required_key(d4rl_file: Path, key: str):
    with h5py.File(d4rl_file, "a") as f:
        del f[key]
    with pytest.raises(DatasetError, match=rf"missing required key\(s\) {key}; a D4RL file has"):
        read_d4rl(d4rl_file)


@pytest.mark.parametrize("key", ["actions", "timeouts", "next_observations"])
def test_lengths_disagree(d4rl_file: Path, key: str):
    with h5py.File(d4rl_file, "a") as f:
        shorter = f[key][:-3]
        del f[key]
        f.create_dataset(key, data=shorter)
    with pytest.raises(DatasetError, match=rf"arrays have different lengths \(.*{key} \d+.*\); expected one row"):
        read_d4rl(d4rl_file)


@pytest.mark.parametrize("key,value", [("observations", np.nan), ("actions", np.inf), ("rewards", -np.inf),
                                       ("next_observations", np.nan)])
def test_nan_or_inf_in_d4rl(d4rl_file: Path, key: str, value: float):
    with h5py.File(d4rl_file, "a") as f:
        data = f[key][()]
        data[17] = value
        f[key][...] = data
    with pytest.raises(DatasetError, match=rf"'{key}' contains NaN or Inf \(first at index \(17"):
        read_d4rl(d4rl_file)


def test_nan_in_minari(make_minari, hopper_episodes):
    hopper_episodes[1]["observations"][-1, 4] = np.nan  # the final observation: only a next_obs
    dataset_id = make_minari(hopper_episodes, "test/hopper/nan-v0")
    with pytest.raises(DatasetError, match=r"minari:test/hopper/nan-v0: 'next_observations.*contains NaN or Inf"):
        read_minari(dataset_id)


def test_empty_d4rl(make_d4rl, hopper_episodes):
    path = make_d4rl(hopper_episodes)
    with h5py.File(path, "w") as f:
        for key, shape in (("observations", (0, 11)), ("actions", (0, 3)), ("rewards", (0,)),
                           ("terminals", (0,)), ("timeouts", (0,))):
            f.create_dataset(key, shape=shape, dtype=np.float32)
    with pytest.raises(DatasetError, match=r"the dataset is empty \(0 transitions\)"):
        read_d4rl(path)


def test_bad_shapes_and_flags(d4rl_file: Path):
    with h5py.File(d4rl_file, "a") as f:
        terminals = f["terminals"][()].astype(np.float32)
        terminals[0] = 0.5
        del f["terminals"]
        f.create_dataset("terminals", data=terminals)
    with pytest.raises(DatasetError, match="'terminals' must hold 0/1"):
        read_d4rl(d4rl_file)
    with h5py.File(d4rl_file, "a") as f:
        obs = f["observations"][()]
        del f["observations"]
        f.create_dataset("observations", data=obs[:, 0])
    with pytest.raises(DatasetError, match=r"'observations' has shape \(\d+,\), expected \(transitions, dim\)"):
        read_d4rl(d4rl_file)


def test_minari_id_not_local_offline_names_allow_download(minari_dataset: str, monkeypatch):
    """No network here: the remote lookup fails fast, and the error still says "not local" and names the key."""
    monkeypatch.setattr(minari_source, "REMOTE_LOOKUP_TIMEOUT_S", 5.0)
    with pytest.raises(DatasetError, match=rf"minari:mujoco/hopper/nothing-v0: not a local Minari dataset .*local "
                                           rf"datasets: {MINARI_ID}\); could not check the Minari remote .*; if it is "
                                           rf"a remote dataset, set data.allow_download: true"):
        read_minari("mujoco/hopper/nothing-v0")


@pytest.mark.parametrize("answer,message", [
    ((True, ""), r"a remote Minari dataset that is not local \(not found under .*\); set data.allow_download: true "
                 r"to download it"),
    ((False, ""), r"unknown Minari dataset id, neither local \(.*\) nor on the Minari remote"),
    ((None, "ConnectError: no route"), r"not a local Minari dataset .*could not check the Minari remote "
                                       r"\(ConnectError: no route\).*data.allow_download: true"),
])
def test_minari_id_not_local_says_what_the_remote_knows(minari_dataset: str, monkeypatch, answer, message):
    asked = []
    monkeypatch.setattr(minari_source, "remote_lookup", lambda dataset_id: asked.append(dataset_id) or answer)
    with pytest.raises(DatasetError, match=rf"minari:mujoco/hopper/expert-v0: {message}"):
        read_minari("mujoco/hopper/expert-v0")
    assert asked == ["mujoco/hopper/expert-v0"]
    read_minari(minari_dataset)                     # a local dataset never asks the remote
    assert asked == ["mujoco/hopper/expert-v0"]


def test_remote_lookup_never_raises_or_hangs(monkeypatch):
    import time
    monkeypatch.setenv("MINARI_REMOTE", "hf://farama-minari")
    start = time.time()
    known, reason = minari_source.remote_lookup("mujoco/hopper/expert-v0", timeout=3.0)
    assert time.time() - start < 10
    assert known in (True, None) and (known or reason)   # True only where a network is available


# -- the whole ingest step ------------------------------------------------------------------
def test_ingest_combines_selects_and_records(d4rl_file, minari_dataset, tmp_path):
    data = data_config(f"d4rl:{d4rl_file}", [f"minari:{minari_dataset}", f"d4rl:{d4rl_file}"],
                       n_trajectories=3, selection="best")
    result = ingest(data, "Hopper-v5", seed=3)
    expert, sub, summary = result.expert, result.suboptimal, result.summary
    full = read_d4rl(d4rl_file)
    assert expert.n_episodes == 3 and sub.n_episodes == 2 * full.n_episodes     # the sources only
    assert expert.meta["selection"] == {"n_trajectories": 3, "selection": "best", "seed": 3,
                                        "skip_terminated": False}
    assert summary["expert"]["selected_episodes"] == expert.meta["selected_episodes"]
    assert summary["expert"]["return_max"] == pytest.approx(full.episode_returns().max())
    assert summary["expert"]["content_hash"] == content_hash([d4rl_file])
    assert summary["suboptimal"]["sources"] == [f"minari:{minari_dataset}", f"d4rl:{d4rl_file}"]
    assert len(summary["suboptimal"]["content_hashes"]) == 2
    for part in summary.values():
        for key in ("episodes", "transitions", "return_mean", "return_min", "return_max", "obs_dim", "act_dim",
                    "source", "content_hash"):
            assert key in part
    assert sub.meta["action_low"] == [-1.0] * 3

    write_ingested(result, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["expert.h5", "suboptimal.h5", "summary.json"]
    loaded = EpisodeDataset.load(tmp_path / "out" / "expert.h5")
    assert_same(loaded, expert)
    assert loaded.meta["selected_episodes"] == summary["expert"]["selected_episodes"]
    assert_same(EpisodeDataset.load(tmp_path / "out" / "suboptimal.h5"), sub)
    # the consumers' switch: ingest's outputs do not depend on it
    alone = ingest(dataclasses.replace(data, expert=dataclasses.replace(data.expert, add_to_suboptimal=False)),
                   "Hopper-v5", seed=3)
    assert_same(alone.suboptimal, sub)
    assert alone.summary == summary


def test_write_ingested_removes_a_killed_writers_staging(d4rl_file, tmp_path):
    out = tmp_path / "out"
    stale = out / ".staging-999999999-abc"                 # no such process
    (stale / "x").mkdir(parents=True)
    (stale / ".expert.h5.123.tmp").write_bytes(b"partial")
    write_ingested(ingest(data_config(f"d4rl:{d4rl_file}", [f"d4rl:{d4rl_file}"]), "Hopper-v5", 0), out)
    assert sorted(p.name for p in out.iterdir()) == ["expert.h5", "suboptimal.h5", "summary.json"]


def test_ingest_errors_name_the_params_key(d4rl_file, tmp_path):
    other = write_d4rl(tmp_path / "pendulum.hdf5", rollout_episodes("InvertedPendulum-v5", 2, 0, 10))
    with pytest.raises(DatasetError, match=rf"data.suboptimal.sources\[1\]: d4rl:{other} has observation/action "
                                           r"dims 4/1 but the expert data .* and env.id Hopper-v5 have 11/3"):
        ingest(data_config(f"d4rl:{d4rl_file}", [f"d4rl:{d4rl_file}", f"d4rl:{other}"]), "Hopper-v5", 0)
    with pytest.raises(DatasetError, match=r"data.expert.source: .*missing.hdf5: file not found"):
        ingest(data_config(f"d4rl:{tmp_path}/missing.hdf5", [f"d4rl:{d4rl_file}"]), "Hopper-v5", 0)
    with pytest.raises(ParamsError, match=r"data.suboptimal.sources\[0\]: unknown source 'ftp://x'"):
        ingest(data_config(f"d4rl:{d4rl_file}", ["ftp://x"]), "Hopper-v5", 0)
