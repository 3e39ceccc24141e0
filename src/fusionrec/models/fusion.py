"""Fusion of an item's channels (aligned modality vectors, optionally its ID embedding) into one vector.

Every item-side fusion maps ``vecs`` [n, C, d] and ``mask`` [n, C] (bool, True = channel
present) to ``(fused [n, d], weights [n, C])``; ``weighted`` and ``attention`` also take an optional
``bias`` [n, C] added to their logits (``id_count_gate``). Missing channels get weight exactly 0:

- ``concat``    concat of the (zeroed-when-missing) channels + MLP;
- ``weighted``  one learned softmax weight per channel, renormalised over present channels;
- ``attention`` the seed's gate: per-item scores ``w·tanh(W v_c)``, softmax renormalised over
  the channels the item has;
- ``user_gate`` item side pools with the attention gate (the input to the sequence model), and
  at scoring time the *user state* sets per-user channel weights α_c(user):
  ``score(u, i) = Σ_c α_c(u)·m_ic·⟨U_c u, v_ic⟩ / Σ_c α_c(u)·m_ic`` (matrix products only).

Example:
    >>> f = make_fusion("attention", channels=3, dim=8)
    >>> vecs = torch.randn(5, 3, 8); mask = torch.tensor([[1, 1, 0]] * 5, dtype=torch.bool)
    >>> fused, w = f(vecs, mask)
    >>> bool(torch.all(w[:, 2] == 0)), bool(torch.allclose(w.sum(1), torch.ones(5)))
    (True, True)
"""

from __future__ import annotations

import torch
from torch import nn

from fusionrec.models.transformer import MASK_VALUE

FUSIONS = ("concat", "weighted", "attention", "user_gate")


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` renormalised over ``mask``; masked entries are exactly 0 (all-masked rows: all 0)."""
    maskf = mask.to(logits.dtype)
    w = torch.softmax(logits + (1.0 - maskf) * MASK_VALUE, dim=dim) * maskf
    return w / w.sum(dim=dim, keepdim=True).clamp_min(1e-12)


class ConcatFusion(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, vecs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maskf = mask.to(vecs.dtype)
        x = (vecs * maskf.unsqueeze(-1)).flatten(1)
        weights = maskf / maskf.sum(1, keepdim=True).clamp_min(1.0)
        return self.mlp(x), weights


class WeightedFusion(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(channels))

    def forward(self, vecs: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits.unsqueeze(0).expand(mask.shape[0], -1)
        w = masked_softmax(logits if bias is None else logits + bias, mask)
        return (w.unsqueeze(-1) * vecs).sum(1), w


class AttentionFusion(nn.Module):
    """The seed's attention gate: score_c = w·tanh(W v_c), softmax over present channels."""

    def __init__(self, channels: int, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.proj = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, vecs: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.score(torch.tanh(self.proj(vecs))).squeeze(-1)  # [n, C]
        w = masked_softmax(logits if bias is None else logits + bias, mask)
        return (w.unsqueeze(-1) * vecs).sum(1), w


class UserGate(nn.Module):
    """User-side half of ``user_gate``: per-user channel weights and per-channel user vectors."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.channels = channels
        self.gate = nn.Linear(dim, channels)
        self.user_proj = nn.Linear(dim, channels * dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` [P, d] -> (alpha [P, C], per-channel user vectors [P, C, d])."""
        alpha = torch.softmax(self.gate(h), dim=-1)
        u = self.user_proj(h).view(h.shape[0], self.channels, -1) + h.unsqueeze(1)
        return alpha, u

    def scores(self, h: torch.Tensor, vecs: torch.Tensor, maskf: torch.Tensor) -> torch.Tensor:
        """Scores [P, n] for items ``vecs`` [n, C, d] with float mask ``maskf`` [n, C]."""
        alpha, u = self.forward(h)
        num = torch.zeros(h.shape[0], vecs.shape[0], dtype=h.dtype, device=h.device)
        for c in range(self.channels):  # static loop over channels (unrolled in an exported graph)
            num = num + alpha[:, c:c + 1] * torch.matmul(u[:, c], (vecs[:, c] * maskf[:, c:c + 1]).t())
        den = torch.matmul(alpha, maskf.t()).clamp_min(1e-6)
        return num / den


def make_fusion(name: str, channels: int, dim: int) -> nn.Module:
    """The item-side fusion module for ``name`` (``user_gate`` pools items with the attention gate)."""
    if name == "concat":
        return ConcatFusion(channels, dim)
    if name == "weighted":
        return WeightedFusion(channels, dim)
    if name in ("attention", "user_gate"):
        return AttentionFusion(channels, dim)
    raise ValueError(f"unknown fusion '{name}', expected one of {FUSIONS}")
