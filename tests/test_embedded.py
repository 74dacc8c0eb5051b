"""The embedded default data: the committed actors, a real Minari build, the cache key."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import embedded
from pipeline.embedded import Segment
from pipeline.policies import load_policy
from pipeline.ingest import read_source


def test_committed_actors_load_weights_only_and_carry_their_card_figures():
    for kind, at_least in (("expert", 2600.0), ("medium", 800.0)):
        ckpt = torch.load(embedded.ASSETS / "hopper" / f"{kind}_actor.pt", weights_only=True)
        assert ckpt["env"] == "Hopper-v5" and ckpt["eval_return_mean"] >= at_least
        load_policy(embedded.ASSETS / "hopper" / f"{kind}_actor.pt")
    for env, env_id in embedded.EMBEDDED_ENVS.items():   # every embedded environment: the actors match its env
        expert, medium = (torch.load(embedded.ASSETS / env / f"{k}_actor.pt", weights_only=True) for k in ("expert", "medium"))
        assert expert["env"] == medium["env"] == env_id
        assert medium["eval_return_mean"] < 0.6 * expert["eval_return_mean"]
        assert {f"{env}/expert", f"{env}/mixed", f"{env}/deterministic-expert"} <= set(embedded.RECIPES)


def test_one_environments_actors_key_only_its_own_cache(monkeypatch):
    before = embedded._fingerprint("hopper")
    monkeypatch.setitem(embedded.RECIPES, "other/expert", [Segment("expert", 0.5, 3, "episodes")])
    assert embedded._fingerprint("hopper") == before
    monkeypatch.setitem(embedded.RECIPES, "hopper/expert", [Segment("expert", 0.5, 3, "episodes")])
    assert embedded._fingerprint("hopper") != before


def test_tiny_recipe_builds_a_minari_dataset_read_back_through_the_minari_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CSIL_EMBEDDED_CACHE", str(tmp_path))
    monkeypatch.setitem(embedded.RECIPES, "hopper/expert", [Segment("expert", 0.05, 2, "episodes")])
    monkeypatch.setitem(embedded.RECIPES, "hopper/mixed", [Segment(None, 0.0, 200), Segment("medium", 0.3, 300)])
    expert = read_source("embedded:hopper/expert")
    mixed = read_source("embedded:hopper/mixed")
    assert expert.n_episodes == 2 and expert.meta["minari_id"] == "embedded/hopper/expert-v0"
    assert mixed.n_transitions >= 500
    expert_returns = [expert.rewards[s:e].sum() for s, e in zip(expert.episode_starts[:-1], expert.episode_starts[1:])]
    assert min(expert_returns) > 1000.0                  # the trained expert hops; random play does not
    assert mixed.rewards.sum() / mixed.n_episodes < np.mean(expert_returns)
    (tmp_path / ".staging-999999999-x" / "embedded").mkdir(parents=True)   # a build killed mid-write
    again = read_source("embedded:hopper/expert")       # cached: same data, no rebuild
    assert np.array_equal(again.actions, expert.actions)
    assert len(list(tmp_path.iterdir())) == 1            # one cache folder, keyed by actors + recipe; no leftovers


def test_unknown_embedded_name_is_a_clear_error():
    with pytest.raises(Exception, match="unknown embedded dataset; available: embedded:hopper/expert"):
        read_source("embedded:hopper/nothing")


def test_deterministic_expert_demonstrates_the_mean_action_from_the_default_experts_start_states(monkeypatch):
    assert [s.noise for s in embedded.RECIPES["hopper/expert"]] == [0.05]
    assert [s.noise for s in embedded.RECIPES["hopper/deterministic-expert"]] == [0.0]
    monkeypatch.setitem(embedded.RECIPES, "hopper/expert", [Segment("expert", 0.05, 1, "episodes")])
    monkeypatch.setitem(embedded.RECIPES, "hopper/deterministic-expert", [Segment("expert", 0.0, 1, "episodes")])
    (noisy,), (clean,) = embedded.build_buffers("hopper/expert"), embedded.build_buffers("hopper/deterministic-expert")
    actor = embedded._load_actor("hopper", "expert")
    np.testing.assert_allclose(clean["actions"], np.stack([actor(o) for o in clean["observations"][:-1]]), atol=1e-6)
    np.testing.assert_array_equal(clean["observations"][0], noisy["observations"][0])
    gap = noisy["actions"][:50] - np.stack([actor(o) for o in noisy["observations"][:50]])
    assert 0.02 < gap.std() < 0.08
