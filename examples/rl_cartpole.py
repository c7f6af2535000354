"""Reinforcement learning under MIMIC-Learn: CartPole-v1 (gymnasium) with a small policy-gradient loop
(REINFORCE with a normalised-return baseline and an entropy bonus), steered through ``Steering``.

    pip install "mimic-learn[rl]"
    python examples/rl_cartpole.py --controller rules            # or local, scripted:<file>, none (baseline)
    python examples/rl_cartpole.py --controller none --epochs 40 --no-track

An "epoch" is ``updates_per_epoch`` policy updates of ``episodes_per_update`` episodes each. At each epoch's end
the controller sees ``mean_return`` (the mean return of the last 20 episodes; higher is better) and the loop's
other numbers, and may change two knobs that reach this loop's objects: the optimizer's learning rate
(``set_lr``) and the entropy coefficient of the loss (``set_entropy_coef``, a user knob,
``mimic_learn.integrations.UserKnob``). Everything is logged to MLflow like ``mimic-learn run``.

Measured (docs/guides/task-families.md): the baseline (``--controller none``, defaults below) reaches a mean
return >= 150 over the last 20 episodes; see that page for the time it took and the machine's load.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from torch import nn

from mimic_learn.agents.providers import default_prompt
from mimic_learn.integrations import Steering, UserKnob


@dataclass
class Hyper:
    epochs: int = 20
    updates_per_epoch: int = 2
    episodes_per_update: int = 8
    lr: float = 0.01
    entropy_coef: float = 0.01
    gamma: float = 0.99
    hidden: int = 64
    seed: int = 0


class Policy(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, obs: torch.Tensor) -> torch.distributions.Categorical:
        return torch.distributions.Categorical(logits=self.net(obs))


@torch.no_grad()
def run_episode(
    env, policy: Policy, seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """One episode, sampled without autograd: (observations, actions, rewards). The update recomputes the
    log-probabilities in one batched forward pass (a few times faster than a graph per step)."""
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards = [], [], []
    done = False
    while not done:
        x = torch.as_tensor(obs, dtype=torch.float32)
        action = policy(x).sample()
        observations.append(x)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action.item())
        rewards.append(float(reward))
        done = terminated or truncated
    return torch.stack(observations), torch.stack(actions), rewards


def discounted(rewards: list[float], gamma: float) -> torch.Tensor:
    out, running = [], 0.0
    for r in reversed(rewards):
        running = r + gamma * running
        out.append(running)
    return torch.tensor(out[::-1])


def train(controller="rules", hyper: Hyper | None = None, **steering_options) -> dict:
    """Train, steered by ``controller`` (``"none"``: the baseline, nobody steers). Returns the per-epoch
    mean returns, the lr and entropy coefficient in force at the end, the episodes and the seconds it took."""
    import gymnasium as gym

    h = hyper or Hyper()
    torch.manual_seed(h.seed)
    env = gym.make("CartPole-v1")
    env.action_space.seed(h.seed)
    policy = Policy(h.hidden)
    optimizer = torch.optim.Adam(policy.parameters(), lr=h.lr)
    coef = {"entropy": h.entropy_coef}  # the user's own object the knob acts on
    entropy_knob = UserKnob(
        "entropy_coef",
        low=0.0,
        high=0.1,
        get=lambda: coef["entropy"],
        set=lambda v: coef.__setitem__("entropy", v),
        description="weight of the entropy bonus in the policy-gradient loss; more explores more",
    )
    steering = Steering(
        policy,
        optimizer,
        epochs=h.epochs,
        controller=controller,
        monitor="mean_return",
        mode="max",
        knobs=[entropy_knob],
        run_name=f"cartpole-{controller if isinstance(controller, str) else 'custom'}",
        experiment="mimic-rl-cartpole",
        **steering_options,
    )
    returns: list[float] = []
    per_epoch: list[float] = []
    start = time.perf_counter()
    reached = None  # seconds until the mean return of the last 20 episodes first reached 150
    episode = 0
    for _ in range(h.epochs):
        losses = []
        for _ in range(h.updates_per_epoch):
            batch_obs, batch_act, batch_adv = [], [], []
            for _ in range(h.episodes_per_update):
                obs, act, rewards = run_episode(env, policy, seed=h.seed * 100_000 + episode)
                episode += 1
                returns.append(sum(rewards))
                if reached is None and len(returns) >= 20 and sum(returns[-20:]) / 20 >= 150:
                    reached = time.perf_counter() - start
                batch_obs.append(obs)
                batch_act.append(act)
                batch_adv.append(discounted(rewards, h.gamma))
            adv = torch.cat(batch_adv)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # normalised returns: the baseline
            dist = policy(torch.cat(batch_obs))
            logp, ent = dist.log_prob(torch.cat(batch_act)), dist.entropy()
            loss = -(logp * adv).mean() - coef["entropy"] * ent.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        mean_return = sum(returns[-20:]) / len(returns[-20:])
        per_epoch.append(mean_return)
        steering.epoch_end(
            {"mean_return": mean_return, "policy_loss": sum(losses) / len(losses), "episodes": float(episode)}
        )
    steering.close()
    env.close()
    return {
        "mean_return": per_epoch,
        "lr": optimizer.param_groups[0]["lr"],
        "entropy_coef": coef["entropy"],
        "episodes": episode,
        "seconds": time.perf_counter() - start,
        "seconds_to_150": reached,
        "run_id": steering.run_id,
        "steering": steering,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controller", default="rules", help="rules, local, scripted:<file>, none, ...")
    parser.add_argument("--epochs", type=int, default=Hyper.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instruction", default=None, help="your words for the controller")
    parser.add_argument("--reflection", default="log_only")
    parser.add_argument(
        "--prompt",
        default=None,
        help="prompt template (default: the controller's, compact for the embedded model)",
    )
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompt = args.prompt or default_prompt(args.controller)
    result = train(
        args.controller,
        Hyper(epochs=args.epochs, seed=args.seed),
        instruction=args.instruction,
        reflection=args.reflection,
        prompt=prompt,
        track=not args.no_track,
        tracking_uri=args.tracking_uri,
    )
    for epoch, value in enumerate(result["mean_return"], 1):
        print(f"epoch {epoch:>3}  mean return (last 20 episodes) {value:7.1f}")
    reached = result["seconds_to_150"]
    print(
        "mean return of the last 20 episodes first >= 150 after "
        + (f"{reached:.1f}s" if reached is not None else "never (not in this run)")
    )
    print(
        f"{result['episodes']} episodes in {result['seconds']:.1f}s; lr {result['lr']:.3g}, entropy_coef "
        f"{result['entropy_coef']:.3g}" + (f"; MLflow run {result['run_id']}" if result["run_id"] else "")
    )


if __name__ == "__main__":
    main()
