"""Per-example features from a model's outputs. Pure tensor functions: any device, any batch size.

Classification (docs/design.md §1.1), from logits z [B, C] and labels y [B], p = softmax(z):

- ``loss``             = −log p_y
- ``renormed_entropy`` = −Σ_{j≠y} q_j log q_j / log(C−1), q_j = p_j / (1 − p_y): the entropy of the
  prediction with the target class removed and the rest renormalised, in [0, 1]. For C = 2 only one class is
  left, so it is defined as 0.
- ``grad_proxy``       = ‖p − onehot(y)‖₂, the norm of the loss gradient w.r.t. the logits.
"""

from __future__ import annotations

import math

import torch

__all__ = ["CLASSIFICATION_FEATURES", "classification_features", "LM_FEATURES", "lm_features", "cache_chunks"]

#: Column order of :func:`lm_features` (language modelling, one row per sequence).
LM_FEATURES: tuple[str, ...] = ("loss", "rarity", "grad_proxy")

#: Column order of :func:`classification_features` and of the feature store for classification tasks.
CLASSIFICATION_FEATURES: tuple[str, ...] = ("loss", "renormed_entropy", "grad_proxy")


@torch.no_grad()
def classification_features(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Features of each example, float32 [B, 3] in the order of :data:`CLASSIFICATION_FEATURES`.

    Args:
        logits: [B, C] raw scores (any float dtype; computed in float32).
        labels: [B] integer class ids in [0, C).

    Stable for p_y → 1 and p_y → 0 (log-space throughout; no NaN or inf for finite logits).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    z = logits.float()
    y = labels.long().view(-1, 1)
    num_classes = z.shape[1]
    if num_classes < 2:
        raise ValueError("classification features need at least 2 classes")
    logp = torch.log_softmax(z, dim=1)
    loss = -logp.gather(1, y).squeeze(1)

    if num_classes == 2:
        renormed = torch.zeros_like(loss)
    else:
        # Removing the target class and renormalising is a softmax over the other logits.
        masked = z.scatter(1, y, float("-inf"))
        logq = torch.log_softmax(masked, dim=1)
        q = logq.exp()
        plogq = torch.where(q > 0, q * logq, torch.zeros_like(q))
        renormed = (-plogq.sum(1) / math.log(num_classes - 1)).clamp_(0.0, 1.0)

    p = logp.exp()
    diff = p.scatter_add(1, y, -torch.ones_like(loss).unsqueeze(1))
    grad = diff.norm(dim=1)
    return torch.stack([loss, renormed, grad], dim=1)


#: Scores (elements) per chunk of the LM features on a CPU: 512 KB of float32, so the passes over a chunk (softmax,
#: norm) run in L2 cache instead of streaming the whole [B, T, V] tensor through memory each time (15 ms
#: instead of 28 ms at 64 x 127 x 2048 on a 2-core Xeon; 2^16 is slower, larger chunks vary). Accelerators take the
#: tensor whole.
CPU_CHUNK = 1 << 17

#: p_y below this (float32's smallest normal is 1.2e-38) takes its log from the scores, not from p_y
TINY = 1e-30


def cache_chunks(logits: torch.Tensor):
    """Index tuples (sequences, positions) that cover ``logits`` [B, T, V] in chunks of about CPU_CHUNK scores."""
    b, t, v = logits.shape
    if logits.device.type != "cpu":
        yield slice(None), slice(None)
        return
    rows = max(1, CPU_CHUNK // v)
    if rows >= t:
        step = rows // t
        for i in range(0, b, step):
            yield slice(i, i + step), slice(None)
    else:
        for i in range(b):
            for j in range(0, t, rows):
                yield slice(i, i + 1), slice(j, j + rows)


@torch.no_grad()
def lm_features(logits: torch.Tensor, targets: torch.Tensor, rarity: torch.Tensor) -> torch.Tensor:
    """Per-sequence language-modelling features, float32 [B, 3] in the order of :data:`LM_FEATURES`.

    Args:
        logits: [B, T, V] next-token scores (already aligned with ``targets``: logits[:, t] predicts targets[:, t]).
        targets: [B, T] token ids.
        rarity: [V] −log unigram frequency of each token on the training split.

    ``loss`` = mean token −log p (log-perplexity of the sequence), ``rarity`` = mean rarity of its target tokens,
    ``grad_proxy`` = mean over tokens of ‖p − onehot‖₂.
    """
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, T, V] and targets [B, T]; got {tuple(logits.shape)}, "
                         f"{tuple(targets.shape)}")
    y = targets.long().unsqueeze(-1)
    p_y = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    rest = torch.empty_like(p_y)
    # the vocab-sized passes cost as much as a small model's forward, so per chunk only two kernels: the fused
    # softmax (max, exp, sum and scale with each row in cache) and one norm of p with p_y zeroed, ‖p − onehot‖² =
    # Σ_{j≠y} p_j² + (1 − p_y)²; written straight into the [B, T] buffers (the chunks are many: few calls each)
    for rows in cache_chunks(logits):
        p = torch.softmax(logits[rows], -1, dtype=torch.float32)
        torch.gather(p, -1, y[rows], out=p_y[rows].unsqueeze(-1))
        torch.linalg.vector_norm(p.scatter_(-1, y[rows], 0.0), dim=-1, out=rest[rows])
    logp_y = p_y.log()
    tiny = p_y < TINY  # log p_y from a denormal or zero p_y would be inexact or -inf: z_y − logsumexp(z) there
    if tiny.any():
        z = logits[tiny].float()
        logp_y[tiny] = z.gather(-1, y[tiny]).squeeze(-1) - torch.logsumexp(z, -1)
    loss = -logp_y.mean(1)
    rare = rarity.to(logits.device, torch.float32)[targets.long()].mean(1)
    grad = torch.hypot(rest, 1.0 - p_y).mean(1)
    return torch.stack([loss, rare, grad], dim=1)
