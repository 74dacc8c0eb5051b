"""params.yaml loading: every unknown key is named with the valid ones; types and values are checked,
up front, by load_params and by every stage script before it does anything."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import ALGOS, RANGES, Params, load_params, numeric_keys
from pipeline.errors import ParamsError

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
    (lambda r: r["data"]["expert"].update(selection="worst"), "'data.expert.selection' must be one of random, first, best"),
    (lambda r: r["data"]["expert"].update(n_trajectories=0), "'data.expert.n_trajectories' must be >= 1"),
    (lambda r: r["data"]["suboptimal"].update(sources=[]), "'data.suboptimal.sources' must be a non-empty list"),
    (lambda r: r["data"]["suboptimal"].update(sources=[1]), r"'data.suboptimal.sources\[0\]' must be str"),
    (lambda r: r["data"].update(max_episode_steps=0), "'data.max_episode_steps' must be >= 1"),
    (lambda r: r["improve"]["awr"].update(actor_schedule="linear"), "'improve.awr.actor_schedule' must be one of cosine, constant"),
    (lambda r: r["improve"]["awr"].update(actor_expert_share=1.0), r"'improve.awr.actor_expert_share' must be in \(0, 1\)"),
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


def test_defaults_equal_params_yaml():
    """The dataclass defaults are the shipped params.yaml: code and file cannot drift apart."""
    assert load_params(REPO / "params.yaml") == Params()


def test_every_number_has_a_range():
    assert set(numeric_keys(Params())) == set(RANGES)


# (edit of params.yaml, the key the one-line error must name, a piece of what is valid)
BAD_PARAMS = [
    ("bc.batch_size: 0", lambda r: r["bc"].update(batch_size=0), "bc.batch_size", ">= 1"),
    ("improve.csil.gamma: 1.2", lambda r: r["improve"]["csil"].update(gamma=1.2), "improve.csil.gamma", "in (0, 1)"),
    ("improve.tau: 2", lambda r: r["improve"].update(tau=2), "improve.tau", "in (0, 1]"),
    ("bc.val_fraction: 1.5", lambda r: r["bc"].update(val_fraction=1.5), "bc.val_fraction", "in (0, 1)"),
    ("bc.stage1_steps: -1", lambda r: r["bc"].update(stage1_steps=-1), "bc.stage1_steps", ">= 1"),
    ("reward.alpha: -1", lambda r: r["reward"].update(alpha=-1), "reward.alpha", "> 0"),
    ("device: cuda", lambda r: r.update(device="cuda"), "device", "use auto"),     # no GPU (made so below)
    ("device: gpu", lambda r: r.update(device="gpu"), "device", "auto, cpu, cuda or cuda:N"),
    ("bc.lr: -0.001", lambda r: r["bc"].update(lr=-0.001), "bc.lr", "> 0"),
    ("improve.log_every: 0", lambda r: r["improve"].update(log_every=0), "improve.log_every", ">= 1"),
    ("improve.algos: [foo]", lambda r: r["improve"].update(algos=["foo"]), "improve.algos", ", ".join(ALGOS)),
    ("improve.steps: 0", lambda r: r["improve"].update(steps=0), "improve.steps", ">= 1"),
    # and a few more
    ("seed: -1", lambda r: r.update(seed=-1), "seed", "in [0, 2147483647]"),
    ("device: cuda:x", lambda r: r.update(device="cuda:x"), "device", "cuda:N"),
    ("env.id: Hoppr-v5", lambda r: r["env"].update(id="Hoppr-v5"), "env.id", "registered gymnasium"),
    ("env.obs_bound: 0", lambda r: r["env"].update(obs_bound=0), "env.obs_bound", "> 0"),
    ("env.termination: sometimes", lambda r: r["env"].update(termination="sometimes"), "env.termination",
     "auto, none, bounds"),
    ("env.ref_scores: [5, 5]", lambda r: r["env"].update(ref_scores=[5, 5]), "env.ref_scores", "min < max"),
    ("data.expert.source: http://x", lambda r: r["data"]["expert"].update(source="http://x.hdf5"),
     "data.expert.source", "d4rl:<path.hdf5>, minari:<dataset-id> or embedded:<name>"),
    ("bc.features: 255", lambda r: r["bc"].update(features=255), "bc.features", "even"),
    ("reward.r_min: .nan", lambda r: r["reward"].update(r_min=float("nan")), "reward.r_min", "finite"),
    ("dynamics.n_elites: 9", lambda r: r["dynamics"].update(n_elites=9), "dynamics.n_elites", "dynamics.n_members = 7"),
    ("dynamics.weight_decay: [-1, ...]", lambda r: r["dynamics"].update(weight_decay=[-1.0] + r["dynamics"]["weight_decay"][1:]),
     "dynamics.weight_decay", ">= 0"),
    ("evaluate.n_envs: 0", lambda r: r["evaluate"].update(n_envs=0), "evaluate.n_envs", ">= 1"),
    ("improve.seeds: [0, 0]", lambda r: r["improve"].update(seeds=[0, 0]), "improve.seeds", "without repeats"),
    ("improve.awr.expectile: 1", lambda r: r["improve"]["awr"].update(expectile=1), "improve.awr.expectile", "in (0, 1)"),
    ("improve.rambo.rollout_demo_share: 1.5", lambda r: r["improve"]["rambo"].update(rollout_demo_share=1.5),
     "improve.rambo.rollout_demo_share", "in [0, 1]"),
]


@pytest.mark.parametrize("edit,key,valid", [case[1:] for case in BAD_PARAMS], ids=[case[0] for case in BAD_PARAMS])
def test_bad_params_are_refused_naming_the_key(tmp_path, monkeypatch, edit, key, valid):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError) as info:
        load_params(write_params(tmp_path, edit))
    message = str(info.value)
    assert message.startswith(f"params.yaml: '{key}") and valid in message, message
    assert "\n" not in message
    if key == "improve.steps":
        assert "critic" not in message


def run_stage_script(cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(REPO / "stages" / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script,args,edit,key", [
    ("bc.py", (), lambda r: r["bc"].update(batch_size=0), "bc.batch_size"),
    ("improve.py", ("--algo", "foo", "--seed", "0"), lambda r: r["improve"].update(algos=["foo"]), "improve.algos"),
    ("ingest.py", (), lambda r: r.update(device="gpu"), "device"),
])
def test_stage_refuses_bad_params_before_any_work(tmp_path, script, args, edit, key):
    """In a project with no data at all: the bad param is reported, not the missing dataset; nothing is written."""
    write_params(tmp_path, edit)
    proc = run_stage_script(tmp_path, script, *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: params.yaml: '{key}"), proc.stderr
    assert "Traceback" not in proc.stderr and "--algo" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]     # no data/, nothing else
