"""AdamW with weight decay on matmul weights only."""

from __future__ import annotations

import torch
from torch import nn

from training.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weights of nn.Linear layers; leave biases, LayerNorms and embeddings alone.

    A tied LM head is met first as the embedding (modules() visits the transformer before lm_head), so it is
    not decayed either.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            is_matmul_weight = isinstance(module, nn.Linear) and name == "weight"
            (decay if is_matmul_weight else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# fused AdamW updates every parameter in one kernel per tensor instead of a chain of foreach ops over the whole
# model; on CPU it takes a fraction of the foreach step's time (results/bench_optim.md)
FUSED_DEVICES = ("cuda", "cpu")


def make_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **({"fused": True} if device_type in FUSED_DEVICES else {}),
    )
