"""Offline policy improvement on CSIL's coherent reward: AWR (IQL-style) and RAMBO-style.

Read top to bottom: the data on the device, the networks, the shared critic target,
one flat update function per algorithm, model rollouts and the adversarial model update,
then the training loop (resumable, no host synchronisation between log points).

Terminal handling (method.md section 4): a terminal transition bootstraps from the
absorbing value V_term = r_min / (1 - gamma), not 0; otherwise falling would beat
continuing anywhere the coherent reward is negative. Timeouts bootstrap from V(s').
Critic targets are clipped above at r_max / (1 - gamma).

AWR's weights exp(beta * A), clipped, are by default divided by their mean within each source
(demonstrations / other data; `normalise_per_source`), so the demonstrations always carry
`actor_expert_share` of the actor loss (the critics still see the 50/50 batch); with raw
weights a sharper reward made a few suboptimal transitions at the clip outweigh every
demonstration (10 demos: 3.3 normalised vs 93.3).

Critic warm-up: for the first ``critic_warmup`` steps only the critics (and V) learn, with
the actor held at its BC start (policy evaluation of BC). A fresh critic's Q - V is noise,
so without it the first thousands of actor updates are an unweighted fit of the
expert/suboptimal mix (AWR) or a climb of a random Q (RAMBO), and both drift from BC.

RAMBO's adversarial term uses the batch *mean* of log p_model * A (as OfflineRL-Kit);
the official RAMBO code *sums* over the batch, so its adv_weight of 3e-4 corresponds to
3e-4 * adv_batch here (0.077 at batch 256). Default: 3e-4 on the mean, OfflineRL-Kit's
setting.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.bc import bc_loss
from pipeline.config import ImproveConfig
from pipeline.nets import EnsembleMLP, mlp, soft_update
from pipeline.policies import Policy
from pipeline.reward import coherent_reward

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


# -- data --------------------------------------------------------------------------------
class TransitionBuffer:
    """Transitions as tensors on one device; uniform sampling without host syncs."""

    def __init__(self, data: Batch):
        self.data = data
        self.size = next(iter(data.values())).shape[0]

    def sample(self, n: int) -> Batch:
        idx = torch.randint(0, self.size, (n,), device=self.data["obs"].device)
        return {k: v[idx] for k, v in self.data.items()}


class RingBuffer:
    """Fixed-capacity FIFO of model transitions, entirely on the device.

    Rollouts return a variable number of live transitions; the host only learns that
    count when ``add`` runs, which happens once per rollout, not per update step.
    """

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

    def sample(self, n: int) -> Batch:
        idx = torch.randint(0, max(self.size, 1), (n,), device=self.data["obs"].device)
        return {k: v[idx] for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"ptr": self.ptr, "size": self.size, **{f"data.{k}": v for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ptr, self.size = int(state["ptr"]), int(state["size"])
        for k in self.data:
            self.data[k].copy_(state[f"data.{k}"])


def mixed_batch(expert: TransitionBuffer, other: TransitionBuffer, n: int, expert_ratio: float) -> Batch:
    """``expert_ratio`` of the rows from the demonstrations, the rest from ``other``; "is_expert" marks them."""
    n_exp = int(round(n * expert_ratio))
    a, b = expert.sample(n_exp), other.sample(n - n_exp)
    batch = {k: torch.cat([a[k], b[k]]) for k in a}
    batch["is_expert"] = torch.cat([torch.ones(n_exp, device=batch["obs"].device),
                                    torch.zeros(n - n_exp, device=batch["obs"].device)])
    return batch


# -- networks ----------------------------------------------------------------------------
class TwinCritic(nn.Module):
    """Two Q networks evaluated as one batched ensemble: (obs, act) -> (2, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        self.net = EnsembleMLP(2, obs_dim + act_dim, (hidden, hidden), 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)


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


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.pow(2)).mean()


def awr_weights(q: torch.Tensor, v: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    return torch.exp(beta * (q - v)).clamp(max=max_weight)


def normalise_per_source(weights: torch.Tensor, is_expert: torch.Tensor, expert_share: float) -> torch.Tensor:
    """Self-normalise the weights of each source (demonstrations / other data).

    The demonstrations then carry ``expert_share`` of the actor loss and the other data the rest,
    whatever the advantages; the advantage only ranks transitions *within* a source. Raw weights
    let a few suboptimal transitions with inflated advantages (at the clip) outweigh every
    demonstration.
    """
    is_demo = (is_expert > 0.5).float()
    n = len(weights)
    out = torch.zeros_like(weights)
    for m, share in ((is_demo, expert_share), (1.0 - is_demo, 1.0 - expert_share)):
        out = out + m * weights * (share * n) / (weights * m).sum().clamp(min=1e-8)
    return out


@torch.no_grad()
def demo_mse(policy: Policy, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the policy's deterministic action on demonstrations: a low-noise,
    offline check that improvement keeps the fit BC has where the expert went."""
    return (policy.act(obs) - act).pow(2).mean()


def demo_subset(expert: TransitionBuffer, n: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset (at most n rows, drawn without touching the global RNG) of the demonstrations."""
    rows = expert.data["obs"].shape[0]
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(rows, generator=g)[:n].to(expert.data["obs"].device)
    return expert.data["obs"][idx], expert.data["act"][idx]


# -- the learner -------------------------------------------------------------------------
class Improver:
    """Holds the networks and optimisers; ``awr_step`` / ``rambo_step`` are the flat updates."""

    def __init__(self, actor: Policy, bc_policy: Policy, cfg: ImproveConfig, bounds: Bounds, alpha: float,
                 device: torch.device, dynamics=None, termination_fn: Callable | None = None):
        self.cfg, self.bounds, self.alpha, self.device = cfg, bounds, alpha, device
        obs_dim, act_dim = actor.obs_dim, actor.act_dim
        self.actor = actor.to(device).train()
        self.bc = bc_policy.to(device).eval().requires_grad_(False)
        self.critic = TwinCritic(obs_dim, act_dim).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(obs_dim, (256, 256), 1).to(device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.critic_lr)
        self.dynamics, self.termination_fn = dynamics, termination_fn
        self.model_opt = (torch.optim.Adam(dynamics.parameters(), lr=cfg.rambo.model_lr)
                          if dynamics is not None else None)

    def reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The coherent reward of the stage-2 BC policy, clipped below at r_min."""
        with torch.no_grad():
            return coherent_reward(self.bc, obs, act, self.alpha).clamp(min=self.bounds.r_min)

    # AWR / IQL ---------------------------------------------------------------------------
    def awr_step(self, b: Batch, actor_b: Batch, update_actor: bool = True) -> dict[str, torch.Tensor]:
        """Value (expectile), Q (TD) on the critics' batch ``b``; the weighted regression on ``actor_b``."""
        cfg = self.cfg.awr
        with torch.no_grad():
            q_target = self.critic_target(b["obs"], b["act"]).min(0).values
        v = self.value(b["obs"]).squeeze(-1)
        value_loss = expectile_loss(q_target - v, cfg.expectile)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_opt.step()

        with torch.no_grad():
            target = td_target(b["rew"], self.value(b["next_obs"]).squeeze(-1), b["terminal"], self.bounds)
        q = self.critic(b["obs"], b["act"])
        critic_loss = F.mse_loss(q, target.expand_as(q)) * 2
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        with torch.no_grad():
            raw_weights = awr_weights(self.critic_target(actor_b["obs"], actor_b["act"]).min(0).values,
                                      self.value(actor_b["obs"]).squeeze(-1), cfg.beta, cfg.max_weight)
        weights = (normalise_per_source(raw_weights, actor_b["is_expert"], cfg.actor_expert_share)
                   if cfg.normalise_weights else raw_weights)
        actor_loss = bc_loss(self.actor, actor_b["obs"], actor_b["act"], cfg.actor_loss, weights)
        if update_actor:
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        return {"critic_loss": critic_loss.detach(), "value_loss": value_loss.detach(),
                "actor_loss": actor_loss.detach(), "q": q_target.mean(),
                "weight_mean": raw_weights.mean(), "weight_clipped": (raw_weights >= cfg.max_weight).float().mean(),
                "weight_ess": weights.sum().square() / (len(weights) * weights.square().sum()).clamp(min=1e-12)}

    # RAMBO-style soft policy iteration --------------------------------------------------
    def kl_to_bc(self, obs: torch.Tensor, act: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
        return log_pi - self.bc.log_prob(obs, act)

    def rambo_step(self, b: Batch, update_actor: bool = True) -> dict[str, torch.Tensor]:
        beta = self.cfg.rambo.kl_beta
        with torch.no_grad():
            a2, lp2 = self.actor.sample(b["next_obs"])
            soft_v = self.critic_target(b["next_obs"], a2).min(0).values - beta * self.kl_to_bc(b["next_obs"], a2, lp2)
            target = td_target(b["rew"], soft_v, b["terminal"], self.bounds)
        q = self.critic(b["obs"], b["act"])
        critic_loss = F.mse_loss(q, target.expand_as(q)) * 2
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        a_pi, lp = self.actor.sample(b["obs"])
        self.critic.requires_grad_(False)
        q_pi = self.critic(b["obs"], a_pi).min(0).values
        self.critic.requires_grad_(True)
        kl = self.kl_to_bc(b["obs"], a_pi, lp)
        actor_loss = (beta * kl - q_pi).mean()
        if update_actor:
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), "q": q_pi.detach().mean(),
                "kl_to_bc": kl.detach().mean()}

    @torch.no_grad()
    def model_rollout(self, start_obs: torch.Tensor, horizon: int) -> Batch:
        """Roll the current policy out in the model; every live transition with its coherent reward."""
        from pipeline.dynamics import rollout
        out = rollout(self.dynamics, lambda o: self.actor.sample(o)[0], start_obs, horizon, self.termination_fn)
        return {"obs": out["obs"], "act": out["act"], "next_obs": out["next_obs"], "terminal": out["terminal"],
                "rew": self.reward(out["obs"], out["act"])}

    def adversarial_model_step(self, start_obs: torch.Tensor, real: Batch, horizon: int) -> dict[str, torch.Tensor]:
        """RAMBO: make the model predict low-advantage outcomes for the policy, stay close to the data.

        loss = adv_weight * mean_batch(log p_model(s'|s,a) * A_normalised) + NLL_model(real batch),
        with A = r + gamma (1-d) min Q(s', pi(s')) - min Q(s, a) over an h-step policy rollout.
        """
        cfg = self.cfg.rambo
        adv_terms = []
        obs = start_obs
        for _ in range(horizon):
            with torch.no_grad():
                act, _ = self.actor.sample(obs)
                next_obs, _ = self.dynamics.step(obs, act)
                done = self.termination_fn(obs, act, next_obs).float()
                next_act, _ = self.actor.sample(next_obs)
                v_next = self.critic(next_obs, next_act).min(0).values
                target = td_target(self.reward(obs, act), v_next, done, self.bounds)
                adv = target - self.critic(obs, act).min(0).values
                adv = (adv - adv.mean()) / (adv.std() + 1e-6)
            adv_terms.append((self.dynamics.log_prob(obs, act, next_obs) * adv).mean())
            obs = next_obs
        adv_loss = torch.stack(adv_terms).mean()
        nll = self.dynamics.nll_loss(real["obs"], real["act"], real["next_obs"])
        loss = cfg.adv_weight * adv_loss + nll
        self.model_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.model_opt.step()
        return {"model_adv_loss": adv_loss.detach(), "model_nll": nll.detach()}

    # checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {name: getattr(self, name).state_dict() for name in
                 ("actor", "critic", "critic_target", "value", "actor_opt", "critic_opt", "value_opt")}
        if self.dynamics is not None:
            state["dynamics"] = self.dynamics.state_dict()
            state["model_opt"] = self.model_opt.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            getattr(self, name).load_state_dict(value)


def train(improver: Improver, algo: str, expert: TransitionBuffer, suboptimal: TransitionBuffer,
          start_states: torch.Tensor, *, resume_path: Path | None = None, fingerprint: str = "",
          evaluate: Callable[[Policy], float] | None = None, eval_every: int = 0) -> list[dict]:
    """Run ``cfg.steps`` updates of ``algo``; returns the learning curve rows.

    Host syncs happen only at log / rollout / checkpoint points. If ``resume_path`` holds
    a checkpoint with the same fingerprint, training continues from it.
    """
    cfg, device = improver.cfg, improver.device
    rcfg = cfg.rambo
    model_buffer = None
    if algo == "rambo":
        obs_dim, act_dim = start_states.shape[1], improver.actor.act_dim
        model_buffer = RingBuffer(rcfg.buffer_rollouts * rcfg.rollout_starts * rcfg.horizon,
                                  {"obs": (obs_dim,), "act": (act_dim,), "next_obs": (obs_dim,),
                                   "terminal": (), "rew": ()}, device)
    curve: list[dict] = []
    first = 0
    if resume_path is not None and resume_path.exists():
        ckpt = torch.load(resume_path, map_location=device, weights_only=True)
        if ckpt.get("fingerprint") == fingerprint:
            improver.load_state_dict(ckpt["improver"])
            if model_buffer is not None:
                model_buffer.load_state_dict(ckpt["model_buffer"])
            torch.set_rng_state(ckpt["rng_cpu"])
            if device.type == "cuda" and "rng_cuda" in ckpt:
                torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
            curve, first = ckpt["curve"], int(ckpt["step"])
            log.info("resumed %s from step %d (%s)", algo, first, resume_path)
        else:
            log.info("ignoring %s: it was written with different inputs or params", resume_path)

    def save_resume(step: int) -> None:
        if resume_path is None:
            return
        from pipeline.utils import atomic_torch_save
        state = {"fingerprint": fingerprint, "step": step, "curve": curve, "improver": improver.state_dict(),
                 "rng_cpu": torch.get_rng_state()}
        if model_buffer is not None:
            state["model_buffer"] = model_buffer.state_dict()
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        atomic_torch_save(state, resume_path)

    demo_obs, demo_act = demo_subset(expert)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    start = time.time()
    bar = tqdm(range(first, cfg.steps), desc=f"improve {algo}", initial=first, total=cfg.steps,
               mininterval=2.0, unit="step")
    schedule = cfg.awr.actor_schedule if algo == "awr" else "constant"   # RAMBO/SAC: constant (cosine: 33.1 -> 0.6)
    for step in bar:
        for group in improver.actor_opt.param_groups:  # stateless schedule: a resumed run gets the same rates
            group["lr"] = actor_lr_at(step, cfg.actor_lr, cfg.steps, schedule)
        if algo == "rambo":
            if step % rcfg.rollout_every == 0:
                idx = torch.randint(0, start_states.shape[0], (rcfg.rollout_starts,), device=device)
                model_buffer.add(improver.model_rollout(start_states[idx], rcfg.horizon))
            n_real = int(round(cfg.batch_size * rcfg.real_ratio))
            real = mixed_batch(expert, suboptimal, n_real, cfg.expert_ratio)
            fake = model_buffer.sample(cfg.batch_size - n_real)
            info = improver.rambo_step({k: torch.cat([real[k], fake[k]]) for k in fake},
                                       update_actor=step >= cfg.critic_warmup)
            if (step + 1) % rcfg.adv_every == 0:
                for _ in range(rcfg.adv_steps):
                    idx = torch.randint(0, start_states.shape[0], (rcfg.adv_batch,), device=device)
                    info.update(improver.adversarial_model_step(start_states[idx], suboptimal.sample(rcfg.adv_batch),
                                                               rcfg.horizon))
        else:
            critic_batch = mixed_batch(expert, suboptimal, cfg.batch_size, cfg.expert_ratio)
            actor_batch = mixed_batch(expert, suboptimal, cfg.awr.actor_batch_size, cfg.expert_ratio)
            info = improver.awr_step(critic_batch, actor_batch, update_actor=step >= cfg.critic_warmup)
        for k, v in info.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            row = {"step": done, **{k: round(float(v) / count, 5) for k, v in sums.items()},
                   "demo_mse": round(float(demo_mse(improver.actor, demo_obs, demo_act)), 5),
                   "steps_per_s": round(count / max(time.time() - start, 1e-9), 1)}
            if evaluate is not None and eval_every and (done % eval_every == 0 or done == cfg.steps):
                row["eval_return"] = round(evaluate(improver.actor), 1)
            curve.append(row)
            bar.set_postfix({k: row[k] for k in ("q", "actor_loss", "eval_return") if k in row})
            sums, count, start = {}, 0, time.time()
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_resume(done)
    bar.close()
    return curve
