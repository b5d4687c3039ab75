"""Objectives: a loss *sum* and the count it is normalized by, so accumulation stays exact.

The loop adds up ``count`` over every micro-batch of an optimizer step (and every worker) first,
then backpropagates ``loss_sum / total``: causal LM loss is the mean over real (unmasked) target
tokens of the whole step, however the tokens fall into micro-batches; DPO is the mean over pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers.chat import IGNORE


def _logits(model, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                 use_cache=False).logits


class CausalLM:
    """Next-token cross-entropy on ``targets`` (-100 = ignored): pretraining and SFT."""

    name = "causal_lm"

    def count(self, batch: dict) -> int:
        return int((batch["targets"] != IGNORE).sum())

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        logits = _logits(model, batch)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                               batch["targets"].reshape(-1), ignore_index=IGNORE, reduction="sum")
        return loss, {}


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of log-probabilities of each row's target tokens (ignoring -100)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = targets != IGNORE
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid DPO (Rafailov et al. 2023) per pair, and the implicit reward margins."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


class DPO:
    """DPO against reference log-probs computed once, before training, by the initial model."""

    name = "dpo"

    def __init__(self, beta: float):
        self.beta = beta
        self.reference: torch.Tensor | None = None  # [pairs, 2]: chosen, rejected

    def count(self, batch: dict) -> int:
        return int(batch["pair_ids"].numel())

    @torch.no_grad()
    def compute_reference(self, model, pairs, batch_size: int, device, autocast) -> None:
        model.eval()
        ref = torch.zeros(len(pairs), 2)
        for start in range(0, len(pairs), batch_size):
            ids = list(range(start, min(start + batch_size, len(pairs))))
            batch = {k: v.to(device) for k, v in pairs.batch_of(ids).items()}
            with autocast():
                logps = sequence_logps(_logits(model, batch), batch["targets"])
            half = len(ids)
            ref[ids, 0], ref[ids, 1] = logps[:half].cpu(), logps[half:].cpu()
        self.reference = ref
        model.train()

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        logps = sequence_logps(_logits(model, batch), batch["targets"])
        half = logps.size(0) // 2
        ref = self.reference[batch["pair_ids"].cpu()].to(logps.device)
        losses, margin = dpo_loss(logps[:half], logps[half:], ref[:, 0], ref[:, 1], self.beta)
        margin = margin.detach()
        return losses.sum(), {"reward_margin": margin.mean(),  # tensors: the loop reads them once
                              "reward_accuracy": (margin > 0).float().mean()}
