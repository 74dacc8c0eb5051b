"""params.yaml loading: every unknown key is named with the valid ones; types and values are checked."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import ParamsError, Params, load_params

REPO = Path(__file__).resolve().parents[1]


def write_params(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repo_params_load():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.expert.selection in ("random", "first", "best")
    assert len(params.data.suboptimal.sources) >= 1


@pytest.mark.parametrize("edit,key,valid", [
    (lambda r: r.update(sead=1), "'sead'", "seed, device, env, data"),
    (lambda r: r["data"]["expert"].update(sorce="d4rl:x"), "'data.expert.sorce'",
     "source, n_trajectories, selection, skip_terminated, add_to_suboptimal"),
    (lambda r: r["data"]["suboptimal"].update(source=["d4rl:x"]), "'data.suboptimal.source'", "sources"),
    (lambda r: r["data"].update(max_episode_step=5), "'data.max_episode_step'", "max_episode_steps"),
    (lambda r: r["improve"]["awr"].update(expectile_tau=0.7), "'improve.awr.expectile_tau'", "expectile"),
    (lambda r: r["env"].update(name="Hopper-v5"), "'env.name'", "id, ref_scores"),
])
def test_unknown_key_anywhere_names_valid_keys(tmp_path, edit, key, valid):
    with pytest.raises(ParamsError, match=rf"unknown key {key}; valid keys.*{valid}"):
        load_params(write_params(tmp_path, edit))


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["data"]["expert"].update(n_trajectories="five"), "'data.expert.n_trajectories' must be int"),
    (lambda r: r["data"]["expert"].update(n_trajectories=2.5), "'data.expert.n_trajectories' must be int"),
    (lambda r: r["data"]["expert"].update(n_trajectories=True), "'data.expert.n_trajectories' must be int"),
    (lambda r: r["data"]["expert"].update(skip_terminated="yes"), "'data.expert.skip_terminated' must be bool"),
    (lambda r: r["data"]["suboptimal"].update(sources="d4rl:x.hdf5"), "'data.suboptimal.sources' must be list"),
    (lambda r: r["data"].update(allow_download=1), "'data.allow_download' must be bool"),
    (lambda r: r.update(seed="0"), "'seed' must be int"),
    (lambda r: r.update(data=3), "'data' must be a mapping"),
    (lambda r: r["data"]["expert"].update(selection="worst"), "'data.expert.selection' must be random, first or best"),
    (lambda r: r["data"]["expert"].update(n_trajectories=0), "'data.expert.n_trajectories' must be >= 1"),
    (lambda r: r["data"]["suboptimal"].update(sources=[]), "'data.suboptimal.sources' must be a non-empty list"),
    (lambda r: r["data"]["suboptimal"].update(sources=[1]), "'data.suboptimal.sources' must be a non-empty list"),
    (lambda r: r["data"].update(max_episode_steps=0), "'data.max_episode_steps' must be >= 1"),
    (lambda r: r["improve"]["awr"].update(actor_schedule="linear"), "'improve.awr.actor_schedule' must be constant or cosine"),
    (lambda r: r["improve"]["awr"].update(actor_expert_share=1.0), r"'improve.awr.actor_expert_share' must be in \(0, 1\)"),
    (lambda r: r["improve"].update(critic_warmup=10 ** 9), "'improve.critic_warmup' must be in 0..steps-1"),
    (lambda r: r["improve"].update(expert_ratio=1.0), r"'improve.expert_ratio' must be in \(0, 1\)"),
    (lambda r: r["improve"].update(expert_ratio=0.001), r"'improve.expert_ratio' must be in \(0, 1\) and leave rows"),
    (lambda r: r["improve"]["awr"].update(actor_batch_size=4) or r["improve"].update(expert_ratio=0.1),
     r"'improve.expert_ratio' must be .* in a batch of improve.awr.actor_batch_size = 4"),
    (lambda r: r["improve"]["rambo"].update(real_ratio=0.0), r"'improve.rambo.real_ratio' must be in \(0, 1\)"),
])
def test_type_and_value_errors_name_the_key(tmp_path, edit, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write_params(tmp_path, edit))


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_defaults_apply_for_omitted_keys(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  expert:\n    source: d4rl:x.hdf5\n")
    params = load_params(path)
    assert params.data.expert.source == "d4rl:x.hdf5" and params.data.expert.n_trajectories == 1
    assert params.data.max_episode_steps == 1000 and params.data.allow_download is False
