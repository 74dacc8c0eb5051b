"""Soft actor-critic (Haarnoja et al. 2018) for training experts in gymnasium MuJoCo envs.

Not part of `dvc repro`: it makes the actors the embedded default datasets are built
from. Twin Q (fused into one batched ensemble), tanh-Gaussian actor, automatic entropy
tuning, 256x256 networks, standard MuJoCo hyperparameters.

    python tools/sac.py --env Hopper-v5 --seed 0 --steps 1000000 --out runs/sac-hopper

A tool beside the library (pipeline/ never imports it), run from the repository root.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.envs import to_env_action  # noqa: E402
from pipeline.nets import EnsembleMLP, soft_update  # noqa: E402
from pipeline.policies import TanhGaussianMLP  # noqa: E402
from pipeline.utils import atomic_torch_save, seed_everything  # noqa: E402


@dataclass
class SACConfig:
    env: str = "Hopper-v5"
    seed: int = 0
    steps: int = 1_000_000
    learning_starts: int = 5_000
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 1e-3
    alpha_lr: float = 3e-4
    hidden: int = 256
    eval_every: int = 10_000
    eval_episodes: int = 10
    threads: int = 1
    out: str = "runs/sac"


def evaluate_actor(actor: TanhGaussianMLP, env_id: str, episodes: int, seed: int) -> tuple[float, float]:
    """Deterministic returns over ``episodes`` episodes (seeds seed, seed+1, ...)."""
    env = gym.make(env_id)
    low, high = env.action_space.low, env.action_space.high
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                a = actor.act(torch.as_tensor(obs, dtype=torch.float32)).numpy()
            obs, r, term, trunc, _ = env.step(to_env_action(a, low, high))
            total += float(r)
            done = term or trunc
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


def train(cfg: SACConfig) -> None:
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    env = gym.make(cfg.env)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high

    actor = TanhGaussianMLP(obs_dim, act_dim, (cfg.hidden, cfg.hidden))
    critic = EnsembleMLP(2, obs_dim + act_dim, (cfg.hidden, cfg.hidden), 1)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    log_alpha = torch.zeros((), requires_grad=True)
    target_entropy = -float(act_dim)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr)
    alpha_opt = torch.optim.Adam([log_alpha], lr=cfg.alpha_lr)

    n = cfg.steps
    buf_obs = torch.zeros(n, obs_dim)
    buf_act = torch.zeros(n, act_dim)
    buf_rew = torch.zeros(n)
    buf_next = torch.zeros(n, obs_dim)
    buf_term = torch.zeros(n)

    obs, _ = env.reset(seed=cfg.seed)
    env.action_space.seed(cfg.seed)
    ep_return, ep_returns = 0.0, []
    log = open(out / "log.tsv", "a")
    if log.tell() == 0:
        log.write("step\twall_s\teval_return_mean\teval_return_std\ttrain_return_recent\talpha\n")
    start = time.time()
    for step in range(n):
        if step < cfg.learning_starts:
            a = np.random.uniform(-1.0, 1.0, act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                a, _ = actor.sample(torch.as_tensor(obs, dtype=torch.float32))
            a = a.numpy()
        next_obs, r, term, trunc, _ = env.step(to_env_action(a, low, high))
        buf_obs[step] = torch.as_tensor(obs)
        buf_act[step] = torch.as_tensor(a)
        buf_rew[step] = float(r)
        buf_next[step] = torch.as_tensor(next_obs)
        buf_term[step] = float(term)
        ep_return += float(r)
        obs = next_obs
        if term or trunc:
            ep_returns.append(ep_return)
            ep_return = 0.0
            obs, _ = env.reset()

        if step >= cfg.learning_starts:
            idx = torch.randint(0, step + 1, (cfg.batch_size,))
            o, act, rew, o2, d = buf_obs[idx], buf_act[idx], buf_rew[idx], buf_next[idx], buf_term[idx]
            alpha = log_alpha.exp().detach()
            with torch.no_grad():
                a2, lp2 = actor.sample(o2)
                q2 = critic_target(torch.cat([o2, a2], -1)).min(0).values.squeeze(-1)
                target = rew + cfg.gamma * (1.0 - d) * (q2 - alpha * lp2)
            q = critic(torch.cat([o, act], -1)).squeeze(-1)
            critic_loss = F.mse_loss(q, target.expand_as(q)) * 2
            critic_opt.zero_grad()
            critic_loss.backward()
            critic_opt.step()

            a_pi, lp = actor.sample(o)
            critic.requires_grad_(False)  # the actor loss needs no critic weight gradients
            q_pi = critic(torch.cat([o, a_pi], -1)).min(0).values.squeeze(-1)
            critic.requires_grad_(True)
            actor_loss = (alpha * lp - q_pi).mean()
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()

            alpha_loss = -(log_alpha * (lp.detach() + target_entropy)).mean()
            alpha_opt.zero_grad()
            alpha_loss.backward()
            alpha_opt.step()
            soft_update(critic_target, critic, cfg.tau)

        if (step + 1) % cfg.eval_every == 0:
            mean, std = evaluate_actor(actor, cfg.env, cfg.eval_episodes, seed=10_000)
            recent = float(np.mean(ep_returns[-10:])) if ep_returns else float("nan")
            wall = time.time() - start
            log.write(f"{step + 1}\t{wall:.0f}\t{mean:.1f}\t{std:.1f}\t{recent:.1f}\t{log_alpha.exp().item():.4f}\n")
            log.flush()
            atomic_torch_save({"state_dict": actor.state_dict(), "config": actor.config(),
                               "env": cfg.env, "seed": cfg.seed, "step": step + 1, "wall_s": wall,
                               "eval_return_mean": mean, "eval_return_std": std},
                              out / f"actor_{step + 1:07d}.pt")
            print(f"step {step + 1} eval {mean:.1f} +- {std:.1f} train {recent:.1f} ({wall:.0f}s)", flush=True)
    log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in asdict(SACConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    train(SACConfig(**vars(parser.parse_args())))


if __name__ == "__main__":
    main()
