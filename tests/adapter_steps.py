"""Plain AdamW steps on a LoRA module's own per-sample loss, for tests that check the adapter learns."""

from __future__ import annotations

import torch


def adapter_losses(module, model: torch.nn.Module, batch: dict, *, lr: float, steps: int) -> list[float]:
    """Mean loss on ``batch`` before each of ``steps`` AdamW updates of the trainable (LoRA) parameters."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = module.per_sample_loss(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
