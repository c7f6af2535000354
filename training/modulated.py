"""The modulated update (the MIMIC-Learn paper's mechanism), around one base optimizer step.

    step = ModulatedStep.begin(targets, alpha, steps_per_epoch)   # before optimizer.step()
    optimizer.step()
    step.finish()                                                 # after it

A delta ``d`` for a parameter is the total change wanted over the coming epoch. On each of the epoch's N
optimizer steps the parameter moves by ``(1 - alpha) * base_step + alpha * d / N``, where ``base_step`` is what
the base optimizer (with its own state, on the current gradient) did. ``d`` is a tensor or a function
``d(grad, param_before_step) -> tensor`` evaluated at every step.

Our Trainer wraps its own ``optimizer.step()`` (``modulated_step``); a user's loop (``LoopTrainer``) calls
``begin`` and ``finish`` from optimizer step hooks, since the user's loop calls ``optimizer.step()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

DeltaFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Target = tuple[torch.Tensor, "torch.Tensor | DeltaFn"]  # (parameter, its delta)


@dataclass
class ModulatedStep:
    held: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | DeltaFn]]  # (param, value before, delta)
    alpha: float
    steps: int

    @classmethod
    @torch.no_grad()
    def begin(cls, targets: list[Target], alpha: float, steps: int) -> ModulatedStep:
        """Remember each target's value before the base step."""
        return cls([(p, p.detach().clone(), d) for p, d in targets], alpha, max(steps, 1))

    @torch.no_grad()
    def finish(self) -> None:
        """Blend the base step just taken with each target's delta."""
        a, n = self.alpha, self.steps
        for p, old, d in self.held:
            g = p.grad.detach() if p.grad is not None else torch.zeros_like(p)
            delta = d(g, old) if callable(d) else d
            p.copy_(old + (1.0 - a) * (p - old) + a * delta / n)
        self.held = []


def modulated_step(base_step: Callable[[], object], targets: list[Target], alpha: float, steps: int) -> None:
    """``base_step()`` (the optimizer's step), modulated for ``targets``; a plain step when there are none or
    ``alpha`` is 0."""
    if not targets or alpha == 0.0:
        base_step()
        return
    step = ModulatedStep.begin(targets, alpha, steps)
    base_step()
    step.finish()
