"""params.yaml as typed config dataclasses (one per section, CORL style).

`load_params` reads params.yaml, rejects any unknown or misspelled key anywhere (naming
the valid keys), checks types, and returns a `Params` tree. Stage scripts read only
their own section. Defaults here mirror params.yaml; params.yaml is what users edit.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


class ParamsError(ValueError):
    """A problem in params.yaml, with the offending key named."""


@dataclass
class EnvConfig:
    id: str = "HalfCheetah-v5"
    ref_scores: Union[str, list] = "auto"      # auto | [min, max]
    termination: str = "auto"                  # auto | none | bounds
    obs_bound: float = 100.0                   # model rollouts stop when |state| exceeds this


@dataclass
class ExpertDataConfig:
    source: str = "embedded:halfcheetah/expert"
    n_trajectories: int = 1
    selection: str = "random"                  # random | first | best
    skip_terminated: bool = False
    add_to_suboptimal: bool = True


@dataclass
class SuboptimalDataConfig:
    sources: list = field(default_factory=lambda: ["embedded:halfcheetah/mixed"])


@dataclass
class DataConfig:
    expert: ExpertDataConfig = field(default_factory=ExpertDataConfig)
    suboptimal: SuboptimalDataConfig = field(default_factory=SuboptimalDataConfig)
    max_episode_steps: int = 1000             # splits D4RL v0 files that have no `timeouts`
    allow_download: bool = False              # let minari download a missing remote dataset


@dataclass
class BCConfig:
    loss: str = "faithful"                    # faithful | nll | mse (stage 1)
    stage2_loss: str = "nll"                   # faithful | nll | mse (stage 2: the reward's policy)
    activation: str = "triangle"              # triangle | sincos
    features: int = 256
    bottleneck: int = 12
    hidden: int = 256
    prior_var: float = 0.75
    log_lengthscale_init: float = 0.0         # CSIL code: -5 (does not train within these budgets)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    stage1_steps: int = 10000
    stage2_steps: int = 15000
    eval_every: int = 500
    patience: int = 10                        # evaluations without held-out improvement
    val_fraction: float = 0.2                 # of expert episodes held out
    baseline_steps: int = 10000
    baseline_hidden: int = 256
    baseline_layers: int = 3
    baseline_seeds: int = 1                   # plain BC fits (seeds seed, seed+1, ...): one is a lottery with few demos
    baseline_keep: str = "last"               # last (train baseline_steps, keep the last iterate) | best (early stopping)


@dataclass
class RewardConfig:
    alpha: Union[str, float] = "auto"         # auto = 1 / act_dim
    r_min: float = -5.0                       # lower clip of the reward
    hist_bins: int = 50


@dataclass
class DynamicsConfig:
    n_members: int = 7
    n_elites: int = 5
    hidden: int = 200
    n_layers: int = 4
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 10                      # keeps the default run inside its 25-minute budget
    max_epoch_steps: int = 1000               # gradient steps per "epoch" cap on big datasets
    patience: int = 5
    holdout: int = 1000
    learn_reward: bool = False
    weight_decay: list = field(default_factory=lambda: [2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4])  # per layer
    multistep_horizon: int = 5
    multistep_episodes: int = 5               # whole episodes held out for the open-loop check


@dataclass
class AWRConfig:
    expectile: float = 0.7
    beta: float = 0.3
    max_weight: float = 100.0
    normalise_weights: bool = True            # per-source self-normalised weights (see improvement.py)
    actor_expert_share: float = 0.9           # the demonstrations' share of the normalised actor loss
    actor_loss: str = "nll"                   # nll (IQL/AWR) | faithful (weighted bc.loss faithful) | mse
    actor_schedule: str = "cosine"            # cosine (IQL: the actor's rate decays to 0 over the run) | constant
    actor_batch_size: int = 512               # rows of the actor's weighted regression (its own mixed batch)


@dataclass
class RAMBOConfig:
    rollout_every: int = 250
    rollout_starts: int = 5000
    horizon: int = 5
    buffer_rollouts: int = 5
    real_ratio: float = 0.5
    kl_beta: float = 0.1
    adv_every: int = 1000
    adv_steps: int = 50
    adv_weight: float = 3e-4
    adv_batch: int = 256
    model_lr: float = 3e-4


@dataclass
class ImproveConfig:
    algos: list = field(default_factory=lambda: ["awr", "rambo"])
    seeds: list = field(default_factory=lambda: [0])
    steps: int = 10000
    critic_warmup: int = 0                    # first steps update only the critics (actor held at BC)
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 1e-3
    critic_lr: float = 3e-4
    expert_ratio: float = 0.5
    log_every: int = 1000
    checkpoint_every: int = 5000
    eval_every: int = 5000                    # monitoring only (curve.tsv), never used for selection
    eval_episodes: int = 3
    compile: bool = False
    awr: AWRConfig = field(default_factory=AWRConfig)
    rambo: RAMBOConfig = field(default_factory=RAMBOConfig)


@dataclass
class EvaluateConfig:
    episodes: int = 10                        # per policy; episode k is reset with a fixed seed
    n_envs: int = 5                           # vectorised environments stepped together
    bootstrap: int = 2000                     # resamples for the aggregates' 95 % interval


@dataclass
class Params:
    seed: int = 0
    device: str = "auto"
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    bc: BCConfig = field(default_factory=BCConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    improve: ImproveConfig = field(default_factory=ImproveConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: '{where or 'top level'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ParamsError(f"params.yaml: unknown key '{where + '.' if where else ''}{key}'; "
                              f"valid keys{' under ' + where if where else ''}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        key, value, hint = f"{where + '.' if where else ''}{name}", raw[name], hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _check_type(value, hint, key)
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, key: str) -> Any:
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    for t in allowed:
        t = typing.get_origin(t) or t
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool, list) and isinstance(value, t):
            return value
    names = " or ".join(getattr(typing.get_origin(t) or t, "__name__", str(t)) for t in allowed)
    raise ParamsError(f"params.yaml: '{key}' must be {names}, got {value!r}")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    params = _build(Params, raw, "")
    _validate(params)
    return params


def _validate(p: Params) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ParamsError(f"params.yaml: {msg}")
    need(p.data.expert.selection in ("random", "first", "best"),
         f"'data.expert.selection' must be random, first or best, got {p.data.expert.selection!r}")
    need(p.data.expert.n_trajectories >= 1, "'data.expert.n_trajectories' must be >= 1")
    need(p.data.max_episode_steps >= 1, "'data.max_episode_steps' must be >= 1")
    need(len(p.data.suboptimal.sources) >= 1 and all(isinstance(s, str) for s in p.data.suboptimal.sources),
         "'data.suboptimal.sources' must be a non-empty list of source strings")
    need(p.env.ref_scores == "auto" or (isinstance(p.env.ref_scores, list) and len(p.env.ref_scores) == 2
                                        and all(isinstance(v, (int, float)) for v in p.env.ref_scores)),
         f"'env.ref_scores' must be 'auto' or [min, max], got {p.env.ref_scores!r}")
    need(p.env.termination in ("auto", "none", "bounds"),
         f"'env.termination' must be auto, none or bounds, got {p.env.termination!r}")
    for key in ("loss", "stage2_loss"):
        need(getattr(p.bc, key) in ("faithful", "nll", "mse"),
             f"'bc.{key}' must be faithful, nll or mse, got {getattr(p.bc, key)!r}")
    need(p.bc.baseline_keep in ("best", "last"), f"'bc.baseline_keep' must be best or last, got {p.bc.baseline_keep!r}")
    need(p.bc.baseline_seeds >= 1, f"'bc.baseline_seeds' must be >= 1, got {p.bc.baseline_seeds}")
    need(p.bc.activation in ("triangle", "sincos"),
         f"'bc.activation' must be triangle or sincos, got {p.bc.activation!r}")
    need(p.reward.alpha == "auto" or isinstance(p.reward.alpha, float),
         f"'reward.alpha' must be 'auto' or a number, got {p.reward.alpha!r}")
    need(0 < p.dynamics.n_elites <= p.dynamics.n_members, "'dynamics.n_elites' must be in 1..n_members")
    need(len(p.improve.algos) >= 1 and all(a in ("awr", "rambo") for a in p.improve.algos),
         f"'improve.algos' must list awr and/or rambo, got {p.improve.algos!r}")
    need(all(isinstance(s, int) for s in p.improve.seeds), "'improve.seeds' must be a list of integers")
    need(p.improve.awr.actor_loss in ("nll", "faithful", "mse"),
         f"'improve.awr.actor_loss' must be nll, faithful or mse, got {p.improve.awr.actor_loss!r}")
    need(p.improve.awr.actor_schedule in ("constant", "cosine"),
         f"'improve.awr.actor_schedule' must be constant or cosine, got {p.improve.awr.actor_schedule!r}")
    need(p.improve.awr.actor_batch_size >= 2,
         f"'improve.awr.actor_batch_size' must be >= 2, got {p.improve.awr.actor_batch_size}")
    need(0.0 < p.improve.awr.actor_expert_share < 1.0,
         f"'improve.awr.actor_expert_share' must be in (0, 1), got {p.improve.awr.actor_expert_share}")
    # mixed_batch draws round(rows * expert_ratio) demonstration rows for the critics' batch and for AWR's
    # actor batch; the rest come from the other data. A source with no rows would drop out of that batch
    # and of normalise_per_source.
    for key, rows in (("improve.batch_size", p.improve.batch_size),
                      ("improve.awr.actor_batch_size", p.improve.awr.actor_batch_size)):
        n_demo = round(rows * p.improve.expert_ratio)
        need(0.0 < p.improve.expert_ratio < 1.0 and 1 <= n_demo < rows,
             f"'improve.expert_ratio' must be in (0, 1) and leave rows of both sources in a batch of "
             f"{key} = {rows}, got {p.improve.expert_ratio}")
    n_real = round(p.improve.batch_size * p.improve.rambo.real_ratio)
    need(0.0 < p.improve.rambo.real_ratio < 1.0 and 2 <= n_real < p.improve.batch_size,
         f"'improve.rambo.real_ratio' must be in (0, 1) and leave real and model rows in a batch of "
         f"improve.batch_size = {p.improve.batch_size}, got {p.improve.rambo.real_ratio}")
    need(0 <= p.improve.critic_warmup < p.improve.steps,
         f"'improve.critic_warmup' must be in 0..steps-1 (steps = {p.improve.steps}), got {p.improve.critic_warmup}")
    need(p.evaluate.episodes >= 1, "'evaluate.episodes' must be >= 1")
    need(p.evaluate.n_envs >= 1, "'evaluate.n_envs' must be >= 1")
    need(p.evaluate.bootstrap >= 1, "'evaluate.bootstrap' must be >= 1")
