"""Offline policy improvement on CSIL's coherent reward, several seeds at once.

Learners (the registry `ALGORITHMS`; one flat update function each):
  csil         CSIL's own offline step (google-deepmind/csil, offline configuration): a
               KL-regularised soft actor-critic on demonstrations + the other data, no model.
               actor loss  beta * (log pi(a|s) - log pi_BC(a|s)) - min Q(s, a),  a ~ pi
               critic      (Q - [r + gamma * soft V(s')])^2 with LayerNorm critics,
                           soft V(s') = min Q'(s', a') - beta * (log pi - log pi_BC)(a'|s')
  awr          IQL-style advantage-weighted regression (expectile V, TD Q, weights
               exp(beta_awr * A / std(A)) with awr.normalise_advantage, on the other data
               only unless awr.weight_demos; its own target rate awr.tau).
  awr_uniform  the same with beta_awr = 0 (uniform weights, same source shares): the ablation
               that shows what the critic adds. Its weights do not depend on Q or V, so it
               trains no critic (the same policy as awr with beta 0, at a third of the cost).
  rambo        the csil learner trained on a mix of real data and model rollouts (started from
               demonstration and other states), with RAMBO's adversarial model update.

Every learner that uses a critic first evaluates its starting policy (see `Algorithm.actor_start`)
for ``critic_pretrain_steps`` updates with the actor held fixed, so no actor follows an untrained
critic (CSIL pre-trains its critic the same way, by policy evaluation on the demonstrations).

Terminal handling (method.md section 4): a terminal transition bootstraps from the absorbing
value V_term = r_min / (1 - gamma), not 0; timeouts bootstrap from V(s'); targets are clipped
above at r_max / (1 - gamma).

Seeds are a batch dimension: every network is a `SeedStack` of S copies evaluated with one
vmapped call, each seed with its own initialisation, data order and noise (`SeedRNG`), and its
own Adam state (a loss summed over seeds gives each slice its own gradient). Seed k trained in
a batch of S matches seed k trained alone. Nothing in the update loop reads back to the host;
logging reads the accumulated sums once per ``log_every``.

RAMBO's adversarial term *sums* log p_model(s'|s,a) * A over the batch, as the official RAMBO
code does (OfflineRL-Kit averages, which makes the same adv_weight 256x weaker at batch 256),
with one model gradient step per rollout step.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.bc import seed_bc_loss
from pipeline.config import AWRConfig, ImproveConfig
from pipeline.distributions import tanh_gaussian_log_prob, tanh_gaussian_sample
from pipeline.nets import EnsembleLinear, adam
from pipeline.policies import Policy
from pipeline.reward import coherent_reward, coherent_reward_from_dist, refinement_terms
from pipeline.utils import atomic_torch_save, progress
from pipeline.vectorised import SeedRNG, SeedStack

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


# -- data --------------------------------------------------------------------------------
@torch.no_grad()
def with_bc_params(bc: Policy, data: Batch, chunk: int = 16_384) -> Batch:
    """Add pi_BC's (loc, std) at obs and next_obs. pi_BC is fixed, and its variance head is the costliest
    matmul of an update (d x F^2 per state): computed once here, the KL term costs nothing per step."""
    out = dict(data)
    for key, prefix in (("obs", "bc_"), ("next_obs", "bc_next_")):
        parts = [bc.dist_params(x) for x in data[key].split(chunk)]
        out[prefix + "loc"] = torch.cat([p[0] for p in parts])
        out[prefix + "std"] = torch.cat([p[1] for p in parts])
    return out


class SeedBuffers:
    """Demonstrations and other transitions on the device (with pi_BC's parameters at every state),
    sampled per seed with its own generator."""

    def __init__(self, demos: Batch, other: Batch, bc: Policy, rng: SeedRNG):
        self.demos, self.other, self.rng = with_bc_params(bc, demos), with_bc_params(bc, other), rng
        self.n_demos, self.n_other = demos["obs"].shape[0], other["obs"].shape[0]

    def mixed(self, n: int, expert_ratio: float) -> Batch:
        """(S, n, .) batches: round(n * expert_ratio) demonstration rows first, then other rows."""
        n_exp = int(round(n * expert_ratio))
        idx_a, idx_b = self.rng.randint(self.n_demos, (n_exp,)), self.rng.randint(self.n_other, (n - n_exp,))
        a = {k: v[idx_a] for k, v in self.demos.items()}
        b = {k: v[idx_b] for k, v in self.other.items()}
        batch = {k: torch.cat([a[k], b[k]], dim=1) for k in a}
        is_expert = torch.zeros(n, device=batch["obs"].device)
        is_expert[:n_exp] = 1.0
        batch["is_expert"] = is_expert.expand(self.rng.n, n)
        return batch

    def start_states(self, n: int, demo_share: float) -> torch.Tensor:
        """(S, n, obs_dim) rollout starts: ``demo_share`` from demonstration states, the rest from the other data."""
        n_exp = int(round(n * demo_share))
        return torch.cat([self.demos["obs"][self.rng.randint(self.n_demos, (n_exp,))],
                          self.other["obs"][self.rng.randint(self.n_other, (n - n_exp,))]], dim=1)


class RingBuffer:
    """Fixed-capacity FIFO of model transitions for one seed, entirely on the device."""

    def __init__(self, capacity: int, shapes: dict[str, tuple[int, ...]], device: torch.device):
        self.capacity, self.ptr, self.size = capacity, 0, 0
        self.data = {k: torch.zeros((capacity, *s), device=device) for k, s in shapes.items()}

    def add(self, batch: Batch) -> None:
        n = batch["obs"].shape[0]
        if n == 0:
            return
        if n > self.capacity:
            batch, n = {k: v[-self.capacity:] for k, v in batch.items()}, self.capacity
        idx = (torch.arange(n, device=batch["obs"].device) + self.ptr) % self.capacity
        for k, v in batch.items():
            self.data[k][idx] = v
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        idx = torch.randint(0, max(self.size, 1), (n,), device=self.data["obs"].device, generator=generator)
        return {k: v[idx] for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"ptr": self.ptr, "size": self.size, **{f"data.{k}": v for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ptr, self.size = int(state["ptr"]), int(state["size"])
        for k in self.data:
            self.data[k].copy_(state[f"data.{k}"])


# -- networks ----------------------------------------------------------------------------
class TwinCritic(nn.Module):
    """Two Q networks as one batched ensemble: (obs, act) (B, .) -> (2, B).

    With ``layer_norm`` each is CSIL's LayerNorm MLP: Linear -> LayerNorm -> Linear -> ELU ->
    Linear; without it a ReLU MLP (IQL's critic).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layer_norm: bool = True):
        super().__init__()
        self.layer_norm = layer_norm
        self.l1 = EnsembleLinear(2, obs_dim + act_dim, hidden)
        self.l2 = EnsembleLinear(2, hidden, hidden)
        self.l3 = EnsembleLinear(2, hidden, 1)
        if layer_norm:
            self.ln_weight = nn.Parameter(torch.ones(2, 1, hidden))
            self.ln_bias = nn.Parameter(torch.zeros(2, 1, hidden))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1).unsqueeze(0).expand(2, -1, -1)
        h = self.l1(x)
        if self.layer_norm:
            h = F.layer_norm(h, h.shape[-1:]) * self.ln_weight + self.ln_bias
            h = F.elu(self.l2(h))
        else:
            h = F.relu(self.l2(F.relu(h)))
        return self.l3(h).squeeze(-1)


class ValueNet(nn.Module):
    def __init__(self, obs_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


@dataclass
class Bounds:
    """Reward range and the values it implies."""
    r_min: float
    r_max: float
    gamma: float

    @property
    def v_terminal(self) -> float:
        return self.r_min / (1.0 - self.gamma)

    @property
    def q_max(self) -> float:
        return self.r_max / (1.0 - self.gamma)


def td_target(rew: torch.Tensor, next_value: torch.Tensor, terminal: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """r + gamma * ((1 - d) V(s') + d V_term), clipped above at r_max / (1 - gamma)."""
    boot = (1.0 - terminal) * next_value + terminal * bounds.v_terminal
    return (rew + bounds.gamma * boot).clamp(max=bounds.q_max)


def actor_lr_at(step: int, lr: float, steps: int, schedule: str) -> float:
    """The actor's learning rate at ``step``: constant, or IQL's cosine decay from lr to 0 over ``steps``."""
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the last dim where ``mask`` is 1 (0 where no row is selected)."""
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Mean over the last dim of |expectile - 1(diff < 0)| * diff^2."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.pow(2)).mean(-1)


def awr_weights(q: torch.Tensor, v: torch.Tensor, beta: float, max_weight: float,
                normalise: bool = False) -> torch.Tensor:
    """exp(beta * A) capped at ``max_weight``, A = Q - V; with ``normalise`` A is divided by its std
    over the last (batch) dim, so beta weighs z-scores whatever the reward's scale."""
    adv = q - v
    if normalise:
        adv = adv / adv.std(-1, keepdim=True).clamp(min=1e-6)
    return torch.exp(beta * adv).clamp(max=max_weight)


def normalise_per_source(weights: torch.Tensor, is_expert: torch.Tensor, expert_share: float) -> torch.Tensor:
    """Self-normalise the weights of each source (demonstrations / other data) along the last dim.

    The demonstrations then carry ``expert_share`` of the actor loss and the other data the rest,
    whatever the advantages; the advantage only ranks transitions *within* a source. Raw weights
    let a few suboptimal transitions with inflated advantages (at the clip) outweigh every
    demonstration.
    """
    is_demo = (is_expert > 0.5).float()
    n = weights.shape[-1]
    out = torch.zeros_like(weights)
    for m, share in ((is_demo, expert_share), (1.0 - is_demo, 1.0 - expert_share)):
        out = out + m * weights * (share * n) / (weights * m).sum(-1, keepdim=True).clamp(min=1e-8)
    return out


def awr_actor_weights(q: torch.Tensor, v: torch.Tensor, is_expert: torch.Tensor,
                      cfg: AWRConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """AWR's (raw, actor-loss) weights. The demonstrations are the target by assumption, so unless
    ``cfg.weight_demos`` they keep uniform weights and the advantage only ranks the other data: within
    one demonstration Q(s, a_demo) - V(s) is mostly the critic's noise, and weighting by it only lowers
    the demonstrations' effective sample size."""
    raw = awr_weights(q, v, cfg.beta, cfg.max_weight, cfg.normalise_advantage)
    if not cfg.weight_demos:
        raw = torch.where(is_expert > 0.5, torch.ones_like(raw), raw)
    weights = normalise_per_source(raw, is_expert, cfg.actor_expert_share) if cfg.normalise_weights else raw
    return raw, weights


# -- the learner state -------------------------------------------------------------------
@dataclass
class Algorithm:
    """A registry entry: the update, what the learner needs, and where its actor starts."""
    name: str
    update: Callable[..., dict[str, torch.Tensor]]
    uses_value: bool
    uses_model: bool
    # the actor step is AWR's weighted regression: its own batch of improve.awr.actor_batch_size rows
    # and improve.awr.actor_schedule
    awr_actor: bool = False
    # "stage1": BC on demos + other data, as CSIL's offline code starts its actor (the KL reference and the
    # reward are the stage-2 policy); "reference": the stage-2 policy itself (the actor starts at KL 0)
    actor_start: str = "stage1"


class Learner:
    """The networks and optimisers of one algorithm for S seeds (leading dim S everywhere)."""

    def __init__(self, algo: str, actor: Policy, bc: Policy, cfg: ImproveConfig, bounds: Bounds, alpha: float,
                 seeds: list[int], device: torch.device, dynamics: nn.Module | None = None,
                 termination_fn: Callable | None = None, reward_policy: Policy | None = None):
        """``bc`` is pi_BC, the KL reference; ``reward_policy`` (default ``bc``) defines the coherent reward of
        model transitions: the reward stage's policy, refined or not (data/reward/policy.pt)."""
        self.algo, self.spec = algo, ALGORITHMS[algo]
        self.cfg, self.bounds, self.alpha, self.device, self.seeds = cfg, bounds, alpha, device, list(seeds)
        self.rng = SeedRNG(seeds, device)
        obs_dim, act_dim = actor.obs_dim, actor.act_dim
        self.actor_template = copy.deepcopy(actor).to(device)
        self.actor = SeedStack([copy.deepcopy(actor).to(device) for _ in seeds])
        self.bc = bc.to(device).eval().requires_grad_(False)
        self.reward_policy = self.bc if reward_policy is None else reward_policy.to(device).eval().requires_grad_(False)

        def per_seed(make: Callable[[], nn.Module], salt: int) -> list[nn.Module]:
            mods = []
            for s in seeds:   # each seed's initialisation depends only on its seed
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(1_000_003 * salt + int(s))
                    mods.append(make().to(device))
            return mods
        critics = per_seed(lambda: TwinCritic(obs_dim, act_dim, cfg.critic_hidden, cfg.critic_layer_norm), 1)
        self.critic = SeedStack(critics)
        self.critic_target = SeedStack(critics).requires_grad_(False)
        self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, device)
        self.actor_opt = adam(self.actor.parameters(), self.actor_lr, device)
        # CSIL's reward refinement: each seed's own copy of the reward's policy keeps training (csil only)
        self.reward_net = self.reward_opt = None
        if getattr(getattr(cfg, algo, None), "refine_reward", False):
            self.reward_net = SeedStack([copy.deepcopy(self.reward_policy) for _ in seeds]).requires_grad_(True)
            self.reward_opt = adam(self.reward_net.parameters(), cfg.csil.reward_lr, device)
        self.value = self.value_opt = None
        if self.spec.uses_value:
            self.value = SeedStack(per_seed(lambda: ValueNet(obs_dim, cfg.critic_hidden), 2))
            self.value_opt = adam(self.value.parameters(), cfg.critic_lr, device)
        self.models, self.model_opts, self.model_buffers = [], [], []
        if self.spec.uses_model:
            rc = cfg.rambo
            self.termination_fn = termination_fn
            self.models = [copy.deepcopy(dynamics).to(device) for _ in seeds]   # each seed's adversary moves its own
            self.model_opts = [adam(m.parameters(), rc.model_lr, device) for m in self.models]
            shapes = {"obs": (obs_dim,), "act": (act_dim,), "next_obs": (obs_dim,), "terminal": (), "rew": (),
                      **{f"bc_{w}{p}": (act_dim,) for w in ("", "next_") for p in ("loc", "std")}}
            self.model_buffers = [RingBuffer(rc.buffer_rollouts * rc.rollout_starts * rc.horizon, shapes, device)
                                  for _ in seeds]
            # MOReL's HALT: a model transition where the elites disagree more than on the real data (its
            # rambo.halt_quantile quantile; 1.0: its maximum) is terminal; set by `set_halt_threshold` (inf: never)
            self.halt_threshold = torch.full((), float("inf"), device=device)

    @property
    def n(self) -> int:
        return len(self.seeds)

    @torch.no_grad()
    def set_halt_threshold(self, buffers: "SeedBuffers") -> None:
        """The ``rambo.halt_quantile`` quantile of the model's elite disagreement on the real transitions."""
        n = 1_000_000                       # torch.quantile's input limit (16M) is far; this bounds the cost
        obs = torch.cat([buffers.demos["obs"], buffers.other["obs"]])[:n]
        act = torch.cat([buffers.demos["act"], buffers.other["act"]])[:n]
        d = self.models[0].disagreement(obs, act)
        self.halt_threshold = torch.quantile(d.float(), self.cfg.rambo.halt_quantile)

    def model_termination(self, k: int) -> Callable:
        """Seed k's termination in its model: the environment's rule, or HALT where the elites disagree."""
        def terminal(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
            return self.termination_fn(obs, act, next_obs) | (self.models[k].disagreement(obs, act) > self.halt_threshold)
        return terminal

    @property
    def actor_lr(self) -> float:
        return self.cfg.section(self.algo).actor_lr

    @property
    def tau(self) -> float:
        """The target critics' soft-update rate. awr has its own: at its gamma 0.99 the critic must reach a
        horizon of hundreds of steps within the run's few thousand updates (csil and rambo discount at 0.9)."""
        section = self.cfg.section(self.algo)
        return section.tau if isinstance(section, AWRConfig) else self.cfg.tau

    @property
    def kl_beta(self) -> float:
        return getattr(self.cfg, self.algo).kl_beta

    # policy helpers on (S, B, .) tensors -----------------------------------------------------
    def actor_dist(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor.call("dist_params", obs)

    def actor_sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, std = self.actor_dist(obs)
        return tanh_gaussian_sample(loc, std, self.rng.randn(tuple(loc.shape[1:])))

    def bc_log_prob(self, b: Batch, act: torch.Tensor, nxt: bool = False) -> torch.Tensor:
        """log pi_BC(act | s) (or s') from the batch's precomputed BC parameters (`with_bc_params`)."""
        prefix = "bc_next_" if nxt else "bc_"
        return tanh_gaussian_log_prob(b[prefix + "loc"], b[prefix + "std"], act)

    def kl_term(self, b: Batch, act: torch.Tensor, log_prob: torch.Tensor, nxt: bool = False) -> torch.Tensor:
        """log pi(act|s) - w(s) log pi_BC(act|s), the actor's KL to its reference. w = 1 (the KL to pi_BC) unless
        ``kl_confidence_power`` p > 0: then w = c(s)^p with c = 1 - mean_k std_BC,k^2 / prior_var, pi_BC's own
        confidence. Where pi_BC sits at its prior (c = 0, off the demonstrations) the term is the entropy
        alone, so the actor follows the critic there instead of being held at the prior; on the
        demonstrations (c near 1) it is the KL to pi_BC."""
        log_bc = self.bc_log_prob(b, act, nxt)
        power = getattr(self.cfg, self.algo).kl_confidence_power
        if power > 0:
            var = b[("bc_next_" if nxt else "bc_") + "std"].pow(2).mean(-1)
            log_bc = log_bc * (1.0 - var / self.bc.prior_var).clamp(0.0, 1.0).pow(power)
        return log_prob - log_bc

    def reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The coherent reward of the reward stage's policy, clipped below at r_min (model transitions)."""
        with torch.no_grad():
            return coherent_reward(self.reward_policy, obs, act, self.alpha).clamp(min=self.bounds.r_min)

    def q(self, obs: torch.Tensor, act: torch.Tensor, target: bool = False, detach: bool = False) -> torch.Tensor:
        """(S, 2, B) twin Q values."""
        return (self.critic_target if target else self.critic).call("forward", obs, act, detach=detach)

    def member_actor(self, k: int) -> Policy:
        return self.actor.member(k, copy.deepcopy(self.actor_template)).eval()

    def member_act(self, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Seed k's stochastic policy on (B, obs) as a plain function (model rollouts)."""
        def act(obs: torch.Tensor) -> torch.Tensor:
            loc, std = self.actor.member_call(k, "dist_params", obs)
            return tanh_gaussian_sample(loc, std)[0]
        return act

    def soft_update(self) -> None:
        with torch.no_grad():
            for t, s in zip(self.critic_target.parameters(), self.critic.parameters()):
                t.lerp_(s, self.tau)

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"critic_opt": self.critic_opt, "actor_opt": self.actor_opt}
        if self.value_opt is not None:
            opts["value_opt"] = self.value_opt
        if self.reward_opt is not None:
            opts["reward_opt"] = self.reward_opt
        return opts

    def state_dict(self) -> dict:
        state = {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                 **({"halt_threshold": self.halt_threshold} if self.spec.uses_model else {}),
                 "critic_target": self.critic_target.state_dict(),
                 **{k: o.state_dict() for k, o in self.optimisers().items()}, "rng": self.rng.state()}
        for name in ("value", "reward_net"):
            if getattr(self, name) is not None:
                state[name] = getattr(self, name).state_dict()
        for k, (m, o, b) in enumerate(zip(self.models, self.model_opts, self.model_buffers)):
            state[f"model{k}"], state[f"model_opt{k}"], state[f"model_buffer{k}"] = m.state_dict(), o.state_dict(), \
                b.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.rng.load_state(state["rng"])
        if "halt_threshold" in state:
            self.halt_threshold = state["halt_threshold"]
        for name in ("actor", "critic", "critic_target", "value", "reward_net"):
            if name in state:
                getattr(self, name).load_state_dict(state[name])
        for k, o in self.optimisers().items():
            o.load_state_dict(state[k])
        for k, (m, o, b) in enumerate(zip(self.models, self.model_opts, self.model_buffers)):
            m.load_state_dict(state[f"model{k}"])
            o.load_state_dict(state[f"model_opt{k}"])
            b.load_state_dict(state[f"model_buffer{k}"])


# -- flat update functions (one per algorithm) -------------------------------------------
def _step(opts: list[torch.optim.Optimizer], loss: torch.Tensor) -> None:
    for o in opts:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in opts:
        o.step()


def awr_update(L: Learner, b: Batch, actor_b: Batch, update_actor: bool) -> dict[str, torch.Tensor]:
    """IQL: V by expectile regression on min Q'(s, a_data), Q by TD to r + gamma V(s'), then the
    actor by the advantage-weighted log-likelihood of the data actions (per-source normalised)."""
    cfg = L.cfg.awr
    with torch.no_grad():
        q_target = L.q(b["obs"], b["act"], target=True).min(1).values               # (S, B)
        target = td_target(b["rew"], L.value(b["next_obs"]), b["terminal"], L.bounds)
    v = L.value(b["obs"])
    value_loss = expectile_loss(q_target - v, cfg.expectile)                          # (S,)
    q = L.q(b["obs"], b["act"])
    critic_loss = (q - target.unsqueeze(1)).pow(2).mean((1, 2)) * 2
    loss = (value_loss + critic_loss).sum()
    with torch.no_grad():
        raw, weights = awr_actor_weights(L.q(actor_b["obs"], actor_b["act"], target=True).min(1).values,
                                         L.value(actor_b["obs"]), actor_b["is_expert"], cfg)
    opts = [L.value_opt, L.critic_opt]
    if update_actor:
        actor_loss = _awr_actor_loss(L, actor_b, weights)
        loss = loss + actor_loss.sum()
        opts.append(L.actor_opt)
    else:
        actor_loss = torch.zeros_like(critic_loss)
    _step(opts, loss)
    L.soft_update()
    return {"critic_loss": critic_loss.detach(), "value_loss": value_loss.detach(),
            "actor_loss": actor_loss.detach(), "q": q_target.mean(-1),
            "weight_clipped": (raw >= cfg.max_weight).float().mean(-1),
            "weight_ess": weights.sum(-1).square() / (weights.shape[-1] * weights.square().sum(-1)).clamp(min=1e-12)}


def awr_uniform_update(L: Learner, b: Batch, actor_b: Batch, update_actor: bool) -> dict[str, torch.Tensor]:
    """The critic's ablation: AWR's actor step with beta 0. Its weights exp(0 * A) are 1 whatever Q
    and V are, so it trains no critic: its policy is exactly that of `awr_update` with beta 0, which
    would train critics it never uses (tested), for about a third of the cost. ``b`` is unused; the
    loop still draws it so the actor sees the same batches as there."""
    if not update_actor:
        return {"actor_loss": torch.zeros(L.n, device=L.device)}
    cfg = L.cfg.awr
    weights = torch.ones_like(actor_b["is_expert"])
    if cfg.normalise_weights:
        weights = normalise_per_source(weights, actor_b["is_expert"], cfg.actor_expert_share)
    actor_loss = _awr_actor_loss(L, actor_b, weights)
    _step([L.actor_opt], actor_loss.sum())
    return {"actor_loss": actor_loss.detach()}


def _awr_actor_loss(L: Learner, actor_b: Batch, weights: torch.Tensor) -> torch.Tensor:
    """(S,) the weighted regression of the data actions: log-likelihood (IQL) or a weighted BC loss."""
    return seed_bc_loss(L.actor, actor_b["obs"], actor_b["act"], L.cfg.awr.actor_loss, weights)


def refined_reward(L: Learner, b: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """CSIL's reward refinement on a csil batch: the reward from each seed's refined reward policy,
    and that policy's loss -mean r(demos) + refine_scale * KL estimate on the other rows, the
    estimate mean(exp(-max(r, -5)) - 1 + r) >= 0 of CSIL's code (it pulls the other data's reward
    towards 0, the prior, and the demonstrations' up). Returns (S, B) rewards (detached, clipped at
    r_min), the (S,) loss and its parts for the log."""
    cfg = L.cfg.csil
    r = coherent_reward_from_dist(*L.reward_net.call("dist_params", b["obs"]), b["act"], L.alpha)
    demo = b["is_expert"]
    other = 1.0 - demo
    expert_r = masked_mean(r, demo)
    kl_est = masked_mean(refinement_terms(r), other)
    loss = -expert_r + cfg.refine_scale * kl_est
    other_r = masked_mean(r.detach(), other)
    return r.detach().clamp(min=L.bounds.r_min), loss, {"expert_reward": expert_r.detach(), "other_reward": other_r,
                                                       "reward_kl_est": kl_est.detach()}


def csil_update(L: Learner, b: Batch, update_actor: bool) -> dict[str, torch.Tensor]:
    """CSIL's KL-regularised soft actor-critic step (also rambo's, on its real/model batch)."""
    beta = L.kl_beta
    refine = L.reward_net is not None and update_actor     # the reward is refined once the actor learns
    rew, reward_loss, reward_info = refined_reward(L, b) if refine else (b["rew"], None, {})
    with torch.no_grad():
        a2, lp2 = L.actor_sample(b["next_obs"])
        soft_v = L.q(b["next_obs"], a2, target=True).min(1).values - beta * L.kl_term(b, a2, lp2, nxt=True)
        target = td_target(rew, soft_v, b["terminal"], L.bounds)
    act = b["act"].detach().requires_grad_(True)        # for the penalty's dQ/da: one critic forward serves both
    q = L.q(b["obs"], act)
    critic_loss = (q - target.unsqueeze(1)).pow(2).mean((1, 2)) * 2
    grad_norm = action_grad_norm(q, act, b["is_expert"])
    loss, opts = (critic_loss + getattr(L.cfg, L.algo).grad_penalty * grad_norm).sum(), [L.critic_opt]
    if refine:
        loss, opts = loss + reward_loss.sum(), opts + [L.reward_opt]
    if update_actor:
        a_pi, lp = L.actor_sample(b["obs"])
        kl = L.kl_term(b, a_pi, lp)
        q_pi = L.q(b["obs"], a_pi, detach=True).min(1).values        # critic weights get no actor gradient
        if getattr(L.cfg, L.algo).normalise_q:   # TD3+BC: the KL weight then means the same at any Q scale
            q_pi = q_pi / q_pi.detach().abs().mean(-1, keepdim=True).clamp(min=1e-3)
        actor_loss = (beta * kl - q_pi).mean(-1)
        loss = loss + actor_loss.sum()
        opts.append(L.actor_opt)
        kl_mean = kl.detach().mean(-1)
    else:
        actor_loss = kl_mean = torch.zeros_like(critic_loss)
    _step(opts, loss)
    L.soft_update()
    return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), "q": q.detach().min(1).values.mean(-1),
            "kl_to_bc": kl_mean, "action_grad_norm": grad_norm.detach(), **reward_info}


def action_grad_norm(q: torch.Tensor, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(S,) sqrt(mean over the ``mask`` (demonstration) rows of ||dQ/da||^2), Q the twins' mean, from
    the (S, 2, B) values ``q`` computed at ``act`` (which requires grad): CSIL's critic action-Jacobian
    regulariser. Penalising it keeps Q flat in the action around the demonstrations, so the actor is
    not pulled off them by the critic's extrapolation."""
    (grad,) = torch.autograd.grad(q.mean(1).sum(), act, create_graph=True)
    return (masked_mean(grad.pow(2).sum(-1), mask) + 1e-12).sqrt()


ALGORITHMS: dict[str, Algorithm] = {
    "csil": Algorithm("csil", csil_update, uses_value=False, uses_model=False),
    "awr": Algorithm("awr", awr_update, uses_value=True, uses_model=False, awr_actor=True),
    "awr_uniform": Algorithm("awr_uniform", awr_uniform_update, uses_value=False, uses_model=False, awr_actor=True),
    "rambo": Algorithm("rambo", csil_update, uses_value=False, uses_model=True),
}


# -- model rollouts and the adversarial model update (rambo) -----------------------------
@contextmanager
def seed_stream(L: Learner, k: int) -> Iterator[None]:
    """Run code that draws from torch's global RNG on seed k's own stream (rollouts, model sampling)."""
    devices = [L.device] if L.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        derived = torch.randint(0, 2 ** 62, (1,), generator=L.rng.cpu_gens[k])   # CPU: no device sync
        torch.manual_seed(int(derived))
        yield


@torch.no_grad()
def model_rollouts(L: Learner, starts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Roll each seed's policy out in its own model from (S, N, obs) ``starts``; add to its buffer.
    Returns the per-seed share of model transitions that were terminal (the env rule or HALT)."""
    from pipeline.dynamics import rollout
    terminal_share = []
    for k in range(L.n):
        with seed_stream(L, k):
            out = rollout(L.models[k], L.member_act(k), starts[k], L.cfg.rambo.horizon, L.model_termination(k))
        batch = {"obs": out["obs"], "act": out["act"], "next_obs": out["next_obs"], "terminal": out["terminal"],
                 "rew": L.reward(out["obs"], out["act"])}
        L.model_buffers[k].add(with_bc_params(L.bc, batch))
        terminal_share.append(out["terminal"].mean() if out["terminal"].numel() else out["terminal"].new_zeros(()))
    return {"model_terminal": torch.stack(terminal_share)}


def model_batch(L: Learner, n: int) -> Batch:
    parts = [buf.sample(n, gen) for buf, gen in zip(L.model_buffers, L.rng.gens)]
    return {key: torch.stack([p[key] for p in parts]) for key in parts[0]}


def real_and_model_batch(L: Learner, buffers: SeedBuffers) -> Batch:
    """rambo's (S, batch_size, .) batch: ``real_ratio`` real rows (demos / other mixed), the rest model rows."""
    n_real = int(round(L.cfg.batch_size * L.cfg.rambo.real_ratio))
    real, fake = buffers.mixed(n_real, L.cfg.expert_ratio), model_batch(L, L.cfg.batch_size - n_real)
    fake["is_expert"] = torch.zeros_like(fake["rew"])
    return {k: torch.cat([real[k], fake[k]], 1) for k in fake}


def adversarial_model_phase(L: Learner, buffers: SeedBuffers) -> dict[str, torch.Tensor]:
    """RAMBO's model update: ``adv_steps`` gradient steps per seed, one per rollout step.

    loss = adv_weight * sum_batch(log p_model(s'|s,a) * A_normalised) + NLL_model(real batch),
    A = r + gamma (1 - d) min Q(s', pi(s')) - min Q(s, a) along an h-step policy rollout in the
    model; the model learns to predict low-advantage outcomes for the policy while staying
    close to the data. Returns per-seed means and ``model_shift``: how far the model's mean
    prediction moved over the phase on a fixed probe batch, in units of the state change's std.
    """
    rc = L.cfg.rambo
    infos = []
    for k in range(L.n):
        model, opt, act_fn, terminal_fn = L.models[k], L.model_opts[k], L.member_act(k), L.model_termination(k)
        critic_k = lambda o, a: L.critic.member_call(k, "forward", o, a)
        with seed_stream(L, k):
            probe = buffers.other["obs"][:256], buffers.other["act"][:256]
            with torch.no_grad():
                before = model.mean_step(*probe)[0]
            adv_sum, nll_sum, steps, obs = 0.0, 0.0, 0, None
            while steps < rc.adv_steps:
                if obs is None or steps % rc.horizon == 0:
                    n_demo = int(round(rc.adv_batch * rc.rollout_demo_share))
                    idx_d = torch.randint(0, buffers.n_demos, (n_demo,), device=L.device)
                    idx_o = torch.randint(0, buffers.n_other, (rc.adv_batch - n_demo,), device=L.device)
                    obs = torch.cat([buffers.demos["obs"][idx_d], buffers.other["obs"][idx_o]])
                with torch.no_grad():
                    act = act_fn(obs)
                    next_obs, _ = model.step(obs, act)
                    done = terminal_fn(obs, act, next_obs).float()
                    v_next = critic_k(next_obs, act_fn(next_obs)).min(0).values
                    adv = td_target(L.reward(obs, act), v_next, done, L.bounds) - critic_k(obs, act).min(0).values
                    adv = (adv - adv.mean()) / (adv.std() + 1e-6)
                adv_loss = (model.log_prob(obs, act, next_obs) * adv).sum()
                real_idx = torch.randint(0, buffers.n_other, (rc.adv_batch,), device=L.device)
                nll = model.nll_loss(buffers.other["obs"][real_idx], buffers.other["act"][real_idx],
                                     buffers.other["next_obs"][real_idx])
                opt.zero_grad(set_to_none=True)
                (rc.adv_weight * adv_loss + nll).backward()
                opt.step()
                adv_sum, nll_sum, steps = adv_sum + adv_loss.detach(), nll_sum + nll.detach(), steps + 1
                alive = (done < 0.5) & torch.isfinite(next_obs).all(-1)
                obs = torch.where(alive.unsqueeze(-1), next_obs, obs)
            with torch.no_grad():
                after = model.mean_step(*probe)[0]
                scale = model.target_std[:model.obs_dim]
                shift = ((after - before) / scale).pow(2).mean().sqrt()
        infos.append({"model_adv_loss": adv_sum / steps, "model_nll": nll_sum / steps, "model_shift": shift})
    return {key: torch.stack([torch.as_tensor(i[key], device=L.device) for i in infos]) for key in infos[0]}


# -- the training loop -------------------------------------------------------------------
@torch.no_grad()
def demo_mse(L: Learner, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """(S,) mean squared error of each seed's deterministic action on demonstrations."""
    loc, _ = L.actor_dist(obs.unsqueeze(0).expand(L.n, -1, -1))
    return (torch.tanh(loc) - act).pow(2).mean((1, 2))


def log_rows(L: Learner, done: int, learning: bool, sums: dict[str, torch.Tensor], counts: dict[str, int],
             demos: tuple[torch.Tensor, torch.Tensor], evaluate: Callable[[Policy], float] | None) -> list[dict]:
    """One curve row per seed: the means since the last row (the loop's only read back to the host)."""
    cfg = L.cfg
    t = done - cfg.critic_pretrain_steps
    means = {k: (v / counts[k]).tolist() for k, v in sums.items()}
    mse = demo_mse(L, *demos).tolist()
    evaluating = evaluate is not None and cfg.eval_every and learning and (t % cfg.eval_every == 0 or t == cfg.steps)
    rows = []
    for k in range(L.n):
        row = {"step": t, "phase": "learn" if learning else "pretrain",
               **{key: round(vals[k], 5) for key, vals in means.items()}, "demo_mse": round(mse[k], 5)}
        if evaluating:
            row["eval_return"] = round(evaluate(L.member_actor(k)), 1)
        rows.append(row)
    return rows


def train(L: Learner, buffers: SeedBuffers, *, resume_path: Path | None = None, fingerprint: str = "",
          evaluate: Callable[[Policy], float] | None = None) -> list[list[dict]]:
    """Run ``cfg.critic_pretrain_steps`` of policy evaluation, then ``cfg.steps`` updates.

    Returns one learning curve (list of rows) per seed. Host syncs happen only at log, rollout
    and checkpoint points. A checkpoint at ``resume_path`` with the same fingerprint resumes.
    Checkpoints are written at log boundaries, so a resumed run logs exactly the same rows.
    """
    cfg, rc = L.cfg, L.cfg.rambo
    total = cfg.critic_pretrain_steps + cfg.steps
    curves: list[list[dict]] = [[] for _ in L.seeds]
    first = 0
    if resume_path is not None and resume_path.exists():
        ckpt = torch.load(resume_path, map_location=L.device, weights_only=True)
        if ckpt.get("fingerprint") == fingerprint:
            L.load_state_dict(ckpt["learner"])
            curves, first = ckpt["curves"], int(ckpt["step"])
            log.info("resumed %s from step %d (%s)", L.algo, first, resume_path)
        else:
            log.info("ignoring %s: it was written with different inputs or params", resume_path)

    demo_obs, demo_act = buffers.demos["obs"][:10_000], buffers.demos["act"][:10_000]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    count, start = 0, time.time()
    schedule = cfg.awr.actor_schedule if L.spec.awr_actor else "constant"
    if L.spec.uses_model and first == 0:
        L.set_halt_threshold(buffers)
    bar = progress(range(first, total), desc=f"improve {L.algo} x{L.n}", initial=first, total=total, unit="step")
    for step in bar:
        learning = step >= cfg.critic_pretrain_steps          # before: policy evaluation, the actor is held
        t = step - cfg.critic_pretrain_steps
        if learning:
            for group in L.actor_opt.param_groups:             # stateless schedule: resumes get the same rates
                group["lr"] = actor_lr_at(t, L.actor_lr, cfg.steps, schedule)
        info: dict[str, torch.Tensor] = {}
        if L.spec.uses_model:
            rolled = model_rollouts(L, buffers.start_states(rc.rollout_starts, rc.rollout_demo_share)) \
                if step % rc.rollout_every == 0 else {}
            info = {**L.spec.update(L, real_and_model_batch(L, buffers), learning), **rolled}
            if learning and (t + 1) % rc.adv_every == 0 and rc.adv_steps > 0:
                info.update(adversarial_model_phase(L, buffers))
        elif L.spec.awr_actor:
            info = L.spec.update(L, buffers.mixed(cfg.batch_size, cfg.expert_ratio),
                                 buffers.mixed(cfg.awr.actor_batch_size, cfg.expert_ratio), learning)
        else:
            info = L.spec.update(L, buffers.mixed(cfg.batch_size, cfg.expert_ratio), learning)
        for k, v in info.items():     # per-key counts: phase metrics (rollout, adversary) are not every step
            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
        count += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            rows = log_rows(L, done, learning, sums, counts, (demo_obs, demo_act), evaluate)
            for curve, row in zip(curves, rows):
                curve.append(row)
            log.debug("%s step %d: %.1f updates/s", L.algo, done, count / max(time.time() - start, 1e-9))
            bar.set_postfix(q=f"{rows[0].get('q', float('nan')):.1f}", actor=f"{rows[0]['actor_loss']:.3f}")
            sums, counts, count, start = {}, {}, 0, time.time()
            if resume_path is not None and done % cfg.checkpoint_every == 0 and done < total:
                atomic_torch_save({"fingerprint": fingerprint, "step": done, "curves": curves,
                                   "learner": L.state_dict()}, resume_path)
    bar.close()
    return curves
