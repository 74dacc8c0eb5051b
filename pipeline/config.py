"""params.yaml as typed config dataclasses (one per section, CORL style), and every check of it.

`load_params` reads params.yaml, rejects any unknown or misspelled key anywhere (naming
the valid keys), checks types (choices are `Literal`s: the error lists them), checks the
range of every number (`RANGES`) and the rules that tie keys together, and returns a
`Params` tree. Each problem is a `ParamsError` whose one-line message names the key and
what is valid. This module is the one home of these checks: the library takes a loaded
`Params` as valid. Stage scripts read only their own section. Defaults here equal
params.yaml (a test); params.yaml is what users edit.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipeline.errors import ParamsError

Device = str                                          # auto | cpu | cuda | cuda:N (checked in `_check_device`)
Termination = Literal["auto", "none", "bounds"]
Selection = Literal["random", "first", "best"]
BCLoss = Literal["faithful", "nll", "mse"]
Activation = Literal["triangle", "sincos"]
BaselineKeep = Literal["last", "best"]
Algo = Literal["csil", "awr", "awr_uniform", "rambo"]
ActorSchedule = Literal["cosine", "constant"]
ALGOS: tuple[str, ...] = typing.get_args(Algo)

SOURCE_SCHEMES = ("d4rl", "minari", "embedded")
SOURCE_FORMS = "d4rl:<path.hdf5>, minari:<dataset-id> or embedded:<name>"


def parse_source(source: str) -> tuple[str, str]:
    """``"d4rl:/x.hdf5"`` -> ``("d4rl", "/x.hdf5")``; ParamsError for any other form."""
    scheme, sep, rest = source.partition(":")
    if not sep or scheme not in SOURCE_SCHEMES:
        raise ParamsError(f"unknown source {source!r}; expected {SOURCE_FORMS}")
    if not rest:
        raise ParamsError(f"source {source!r} names no file or dataset; expected {SOURCE_FORMS}")
    return scheme, rest


@dataclass
class EnvConfig:
    id: str = "HalfCheetah-v5"
    ref_scores: Union[Literal["auto"], list[float]] = "auto"   # auto | [min, max]
    termination: Termination = "auto"
    obs_bound: float = 100.0                   # model rollouts stop when |state| exceeds this


@dataclass
class ExpertDataConfig:
    source: str = "embedded:halfcheetah/expert"
    n_trajectories: int = 1
    selection: Selection = "random"
    skip_terminated: bool = False
    add_to_suboptimal: bool = True


@dataclass
class SuboptimalDataConfig:
    sources: list[str] = field(default_factory=lambda: ["embedded:halfcheetah/mixed"])


@dataclass
class DataConfig:
    expert: ExpertDataConfig = field(default_factory=ExpertDataConfig)
    suboptimal: SuboptimalDataConfig = field(default_factory=SuboptimalDataConfig)
    max_episode_steps: int = 1000             # splits D4RL v0 files that have no `timeouts`
    allow_download: bool = False              # let minari download a missing remote dataset


@dataclass
class BCConfig:
    loss: BCLoss = "faithful"                 # stage 1
    stage2_loss: BCLoss = "nll"               # stage 2: the reward's policy
    activation: Activation = "triangle"
    features: int = 256
    bottleneck: int = 12
    hidden: int = 256
    prior_var: float = 0.75
    log_lengthscale_init: float = 0.0         # CSIL code: -5 (does not train within these budgets)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    stage1_steps: int = 6000
    stage2_steps: int = 8000
    eval_every: int = 500
    patience: int = 10                        # evaluations without held-out improvement
    val_fraction: float = 0.2                 # of expert episodes held out
    baseline_steps: int = 5000
    baseline_hidden: int = 256
    baseline_layers: int = 3
    baseline_seeds: int = 3                   # plain BC fits (seeds seed, seed+1, ...): one is a lottery with few demos
    baseline_keep: BaselineKeep = "last"      # last (train baseline_steps, keep the last iterate) | best (early stopping)


@dataclass
class RewardConfig:
    alpha: Union[Literal["auto"], float] = "auto"   # auto = 1 / act_dim
    r_min: float = -5.0                       # lower clip of the reward
    hist_bins: int = 50
    refine_steps: int = 0                     # CSIL's reward refinement before improvement (0: the stage-2 policy as is)
    refine_lr: float = 1e-3                   # its Adam rate (CSIL: 1e-3)
    refine_batch_size: int = 256              # its rows per step, half demonstrations, half other data


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
    weight_decay: list[float] = field(default_factory=lambda: [2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4])  # per layer
    multistep_horizon: int = 5
    multistep_episodes: int = 5               # whole episodes held out for the open-loop check


@dataclass
class CSILConfig:
    gamma: float = 0.9                        # discount (CSIL: 0.99; 0.9 reaches its horizon within the update budget)
    kl_beta: float = 0.15                     # KL(pi || pi_BC) weight (CSIL: 0.01, drifts here), < alpha
    actor_lr: float = 3e-4                    # CSIL: Adam 3e-4
    grad_penalty: float = 1.0                 # weight of sqrt(E||dQ/da||^2) on demos in the critic loss (CSIL: 1)
    normalise_q: bool = True                  # actor's Q term divided by the batch's mean |Q| (TD3+BC's scale rule)
    kl_confidence_power: float = 0.0          # log pi_BC weighted by pi_BC's confidence (1 - var / prior_var)^p; 0 = plain KL
    refine_reward: bool = False               # CSIL's reward refinement: the reward's policy keeps training with the critic
    reward_lr: float = 1e-3                   # Adam rate of the refined reward's policy (CSIL: 1e-3)
    refine_scale: float = 1.0                 # weight of the KL estimate on the other data (CSIL's scale_factor: 1)


@dataclass
class AWRConfig:
    gamma: float = 0.99                       # discount (IQL's; 0.9 lost 26 on hopper)
    expectile: float = 0.7
    beta: float = 1.0
    normalise_advantage: bool = True          # weights exp(beta * A / std(A)) over the batch: beta means the same at any reward scale
    max_weight: float = 100.0
    normalise_weights: bool = True            # per-source self-normalised weights (see improvement.py)
    actor_expert_share: float = 0.7           # the demonstrations' share of the normalised actor loss
    actor_loss: BCLoss = "nll"                # nll (IQL/AWR) | faithful (weighted bc.loss faithful) | mse
    actor_schedule: ActorSchedule = "cosine"  # cosine (IQL: the actor's rate decays to 0 over the run) | constant
    actor_batch_size: int = 512               # rows of the actor's weighted regression (its own mixed batch)
    actor_lr: float = 1e-3
    weight_demos: bool = False                # True: the advantage also weights the demonstrations (IQL weights every row)
    tau: float = 0.02                         # awr's target-critic rate (improve.tau is csil's and rambo's)


@dataclass
class RAMBOConfig:
    gamma: float = 0.9                        # as csil
    kl_beta: float = 0.15                     # as csil
    actor_lr: float = 3e-4
    grad_penalty: float = 1.0                 # as csil
    normalise_q: bool = True                  # as csil
    kl_confidence_power: float = 0.0          # as csil
    rollout_every: int = 250
    rollout_starts: int = 5000
    rollout_demo_share: float = 0.5           # rollout (and adversary) starts drawn from demonstration states
    horizon: int = 5
    buffer_rollouts: int = 5
    real_ratio: float = 0.5
    adv_every: int = 1000
    adv_steps: int = 250
    adv_weight: float = 3e-4
    adv_batch: int = 256
    model_lr: float = 3e-4
    halt_quantile: float = 1.0                # model transitions past this quantile of the real data's elite disagreement are terminal


@dataclass
class ImproveConfig:
    algos: list[Algo] = field(default_factory=lambda: ["awr", "awr_uniform", "csil"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 5000
    critic_pretrain_steps: int = 1000         # policy evaluation of the start actor before the actor moves
    batch_size: int = 256
    tau: float = 0.005
    critic_lr: float = 3e-4
    critic_hidden: int = 256                  # width of the critics' (and AWR's value net's) two hidden layers
    critic_layer_norm: bool = True            # CSIL's LayerNorm critics
    expert_ratio: float = 0.5
    log_every: int = 1000
    checkpoint_every: int = 5000
    eval_every: int = 5000                    # monitoring only (curve.tsv), never used for selection
    eval_episodes: int = 3
    csil: CSILConfig = field(default_factory=CSILConfig)
    awr: AWRConfig = field(default_factory=AWRConfig)
    rambo: RAMBOConfig = field(default_factory=RAMBOConfig)

    def section(self, algo: str) -> CSILConfig | AWRConfig | RAMBOConfig:
        """The learner's own settings (awr_uniform shares awr's)."""
        return self.awr if algo in ("awr", "awr_uniform") else getattr(self, algo)


@dataclass
class EvaluateConfig:
    episodes: int = 30                        # per policy; episode k is reset with a fixed seed
    n_envs: int = 5                           # vectorised environments stepped together
    bootstrap: int = 2000                     # resamples for the aggregates' 95 % interval


@dataclass
class Params:
    seed: int = 0
    device: Device = "auto"                   # auto | cpu | cuda | cuda:N
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


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(t) for t in typing.get_args(hint))
    return getattr(origin or hint, "__name__", str(hint))


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """``value`` as ``hint`` (int, float, str, bool, Literal[...], list[...], or a Union of them)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, key)
            except ParamsError:
                continue
    elif origin is Literal:
        if isinstance(value, str) and value in typing.get_args(hint):
            return value
    elif origin is list or hint is list:
        if isinstance(value, list):
            (item,) = typing.get_args(hint) or (Any,)
            return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif hint is Any:
        return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ParamsError(f"params.yaml: '{key}' must be a finite number, got {value!r}")
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (str, bool) and isinstance(value, hint):
        return value
    raise ParamsError(f"params.yaml: '{key}' must be {_describe(hint)}, got {value!r}")


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
    from pipeline.params_trace import trace_reads   # records the keys a stage reads, for tests/test_pipeline.py
    return trace_reads(params)


# -- value checks -------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """low <= x (or low < x with ``low_open``) and x <= high (or x < high); None = unbounded."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        return ((self.low is None or (x > self.low if self.low_open else x >= self.low))
                and (self.high is None or (x < self.high if self.high_open else x <= self.high)))

    def __str__(self) -> str:
        num = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"
        if self.low is None and self.high is None:
            return "a finite number"
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {num(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {num(self.high)}"
        return f"in {'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}{')' if self.high_open else ']'}"


COUNT = Range(1)                                   # sizes, step counts, intervals: >= 1
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)                 # rates, scales: > 0
OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)
ANY = Range()
SEED = Range(0, 2 ** 31 - 1)                       # numpy / torch seeds
# Evaluation episodes per policy (evaluate.episodes, improve.eval_episodes): bounded so that the reported
# and the tuning reset seeds can never overlap (pipeline/evaluation.py REPORT_SEED_BASE, TUNING_SEED_BASE).
MAX_EVAL_EPISODES = 100_000
EPISODES = Range(1, MAX_EVAL_EPISODES)

# The range of every int / float key (list entries: "<key>[]"). A test asserts none is missing.
RANGES: dict[str, Range] = {
    "seed": SEED,
    "env.ref_scores[]": ANY,
    "env.obs_bound": POSITIVE,
    "data.expert.n_trajectories": COUNT,
    "data.max_episode_steps": COUNT,
    "bc.features": Range(2),
    "bc.bottleneck": COUNT,
    "bc.hidden": COUNT,
    "bc.prior_var": POSITIVE,
    "bc.log_lengthscale_init": ANY,
    "bc.lr": POSITIVE,
    "bc.weight_decay": NON_NEGATIVE,
    "bc.batch_size": COUNT,
    "bc.stage1_steps": COUNT,
    "bc.stage2_steps": COUNT,
    "bc.eval_every": COUNT,
    "bc.patience": COUNT,
    "bc.val_fraction": OPEN_UNIT,
    "bc.baseline_steps": COUNT,
    "bc.baseline_hidden": COUNT,
    "bc.baseline_layers": COUNT,
    "bc.baseline_seeds": COUNT,
    "reward.alpha": POSITIVE,
    "reward.r_min": ANY,
    "reward.hist_bins": COUNT,
    "reward.refine_steps": NON_NEGATIVE,
    "reward.refine_lr": POSITIVE,
    "reward.refine_batch_size": Range(2),
    "dynamics.n_members": COUNT,
    "dynamics.n_elites": COUNT,
    "dynamics.hidden": COUNT,
    "dynamics.n_layers": COUNT,
    "dynamics.lr": POSITIVE,
    "dynamics.batch_size": COUNT,
    "dynamics.max_epochs": COUNT,
    "dynamics.max_epoch_steps": COUNT,
    "dynamics.patience": COUNT,
    "dynamics.holdout": COUNT,
    "dynamics.weight_decay[]": NON_NEGATIVE,
    "dynamics.multistep_horizon": COUNT,
    "dynamics.multistep_episodes": NON_NEGATIVE,
    "improve.seeds[]": SEED,
    "improve.steps": COUNT,
    "improve.critic_pretrain_steps": COUNT,    # no actor follows an untrained critic
    "improve.batch_size": Range(2),
    "improve.tau": Range(0, 1, low_open=True),
    "improve.critic_lr": POSITIVE,
    "improve.critic_hidden": COUNT,
    "improve.expert_ratio": OPEN_UNIT,
    "improve.log_every": COUNT,
    "improve.checkpoint_every": COUNT,
    "improve.eval_every": NON_NEGATIVE,        # 0 = off
    "improve.eval_episodes": EPISODES,
    "improve.csil.gamma": OPEN_UNIT,
    "improve.csil.kl_beta": NON_NEGATIVE,
    "improve.csil.actor_lr": POSITIVE,
    "improve.csil.grad_penalty": NON_NEGATIVE,
    "improve.csil.kl_confidence_power": NON_NEGATIVE,
    "improve.csil.reward_lr": POSITIVE,
    "improve.csil.refine_scale": NON_NEGATIVE,
    "improve.awr.gamma": OPEN_UNIT,
    "improve.awr.tau": Range(0, 1, low_open=True),
    "improve.awr.expectile": OPEN_UNIT,
    "improve.awr.beta": NON_NEGATIVE,
    "improve.awr.max_weight": POSITIVE,
    "improve.awr.actor_expert_share": OPEN_UNIT,
    "improve.awr.actor_batch_size": Range(2),
    "improve.awr.actor_lr": POSITIVE,
    "improve.rambo.gamma": OPEN_UNIT,
    "improve.rambo.kl_beta": NON_NEGATIVE,
    "improve.rambo.actor_lr": POSITIVE,
    "improve.rambo.grad_penalty": NON_NEGATIVE,
    "improve.rambo.kl_confidence_power": NON_NEGATIVE,
    "improve.rambo.rollout_every": COUNT,
    "improve.rambo.rollout_starts": COUNT,
    "improve.rambo.rollout_demo_share": Range(0, 1),
    "improve.rambo.horizon": COUNT,
    "improve.rambo.buffer_rollouts": COUNT,
    "improve.rambo.real_ratio": OPEN_UNIT,
    "improve.rambo.adv_every": COUNT,
    "improve.rambo.adv_steps": NON_NEGATIVE,
    "improve.rambo.adv_weight": NON_NEGATIVE,
    "improve.rambo.adv_batch": COUNT,
    "improve.rambo.model_lr": POSITIVE,
    "improve.rambo.halt_quantile": Range(0, 1),
    "evaluate.episodes": EPISODES,
    "evaluate.n_envs": COUNT,
    "evaluate.bootstrap": COUNT,
}


def _is_number_hint(hint: Any) -> bool:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return any(_is_number_hint(t) for t in typing.get_args(hint))
    return hint in (int, float)


def numeric_keys(cfg: Any, where: str = "") -> dict[str, Any]:
    """Dotted key -> value of every key typed int / float (list entries: "<key>[]" -> the list)."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key, value, hint = f"{where}{f.name}", getattr(cfg, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(numeric_keys(value, key + "."))
            continue
        options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
        if any(typing.get_origin(t) is list and _is_number_hint(typing.get_args(t)[0]) for t in options):
            out[key + "[]"] = value if isinstance(value, list) else []
        if _is_number_hint(hint):
            out[key] = value
    return out


def _fail(key: str, expected: str, value: Any) -> None:
    raise ParamsError(f"params.yaml: '{key}' must be {expected}, got {value!r}")


def _check_device(device: str) -> None:
    match = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", device)
    if match is None:
        _fail("device", "auto, cpu, cuda or cuda:N", device)
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ParamsError(f"params.yaml: 'device' is {device!r} but no CUDA device is available here; "
                              f"use auto (cuda when there is one, else cpu) or cpu")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise ParamsError(f"params.yaml: 'device' is {device!r} but there are only {torch.cuda.device_count()} "
                              f"CUDA devices (cuda:0 to cuda:{torch.cuda.device_count() - 1})")


def _check_env_id(env_id: str) -> None:
    import gymnasium as gym
    try:
        gym.spec(env_id)
    except (gym.error.Error, ImportError) as exc:
        raise ParamsError(f"params.yaml: 'env.id' must be a registered gymnasium environment id, got {env_id!r} "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _validate(p: Params) -> None:
    # 1. every number in its range (so e.g. improve.steps: 0 is named, not a rule that uses it)
    for key, value in numeric_keys(p).items():
        if key not in RANGES:   # a new key without a range: tests/test_config.py fails until it has one
            continue
        for v in (value if key.endswith("[]") else [value]):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v not in RANGES[key]:
                _fail(key.removesuffix("[]"), f"{RANGES[key]}{' (each entry)' if key.endswith('[]') else ''}", v)

    # 2. forms and lists
    _check_device(p.device)
    _check_env_id(p.env.id)
    for key, source in [("data.expert.source", p.data.expert.source)] + \
            [(f"data.suboptimal.sources[{i}]", s) for i, s in enumerate(p.data.suboptimal.sources)]:
        try:
            parse_source(source)
        except ParamsError as exc:
            raise ParamsError(f"params.yaml: '{key}': {exc}") from None
    if not p.data.suboptimal.sources:
        _fail("data.suboptimal.sources", "a non-empty list of sources", p.data.suboptimal.sources)
    if p.env.ref_scores != "auto" and not (len(p.env.ref_scores) == 2 and p.env.ref_scores[0] < p.env.ref_scores[1]):
        _fail("env.ref_scores", "auto or [min, max] with min < max", p.env.ref_scores)
    for key, values in (("improve.algos", p.improve.algos), ("improve.seeds", p.improve.seeds)):
        if not values or len(set(values)) != len(values):
            _fail(key, "a non-empty list without repeats", values)

    # 3. rules that tie keys together
    if p.bc.features % 2:
        _fail("bc.features", "even (sin and cos halves of the stationary features)", p.bc.features)
    if p.dynamics.n_elites > p.dynamics.n_members:
        _fail("dynamics.n_elites", f"in 1..dynamics.n_members = {p.dynamics.n_members}", p.dynamics.n_elites)
    if len(p.dynamics.weight_decay) != p.dynamics.n_layers + 1:
        _fail("dynamics.weight_decay", f"a list of dynamics.n_layers + 1 = {p.dynamics.n_layers + 1} numbers "
              f"(one per layer, output layer last)", p.dynamics.weight_decay)
    # The critics' batch and AWR's actor batch take round(rows * expert_ratio) demonstration rows and the
    # rest from the other data; a source with no rows would drop out of that batch and of normalise_per_source.
    for key, rows in (("improve.batch_size", p.improve.batch_size),
                      ("improve.awr.actor_batch_size", p.improve.awr.actor_batch_size)):
        if not 1 <= round(rows * p.improve.expert_ratio) < rows:
            _fail("improve.expert_ratio", f"in (0, 1) and leave rows of both sources in a batch of {key} = {rows}",
                  p.improve.expert_ratio)
    if not 2 <= round(p.improve.batch_size * p.improve.rambo.real_ratio) < p.improve.batch_size:
        _fail("improve.rambo.real_ratio", f"in (0, 1) and leave real and model rows in a batch of "
              f"improve.batch_size = {p.improve.batch_size}", p.improve.rambo.real_ratio)
    if p.improve.checkpoint_every % p.improve.log_every:
        _fail("improve.checkpoint_every", f"a multiple of improve.log_every = {p.improve.log_every}",
              p.improve.checkpoint_every)
