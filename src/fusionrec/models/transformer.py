"""An ONNX-exportable causal Transformer encoder over item-vector sequences (SASRec-style).

Written by hand rather than with ``nn.TransformerEncoder`` (whose fast path breaks
``torch.onnx.export(dynamo=True)``): one ``qkv`` Linear per block, softmax with a *finite*
additive mask (``MASK_VALUE``, not ``-inf``), and every position may always attend to itself,
so no softmax row is fully masked even for left padding or an empty history. ``forward`` has
no data-dependent Python control flow.

Example:
    >>> enc = SequenceEncoder(dim=32, layers=2, heads=2, max_len=50)
    >>> x = torch.randn(4, 50, 32); valid = torch.ones(4, 50, dtype=torch.bool)
    >>> enc(x, valid).shape
    torch.Size([4, 50, 32])
"""

from __future__ import annotations

import math

import torch
from torch import nn

MASK_VALUE = -1.0e4


def attention_bias(valid: torch.Tensor) -> torch.Tensor:
    """Additive attention bias [B, 1, L, L] from a key-validity mask ``valid`` [B, L] (bool).

    Position i may attend to j when j <= i (causal) and j is a real item, and always to itself.
    """
    L = valid.shape[1]
    ar = torch.arange(L, device=valid.device)
    causal = ar.view(1, L) <= ar.view(L, 1)  # [L(query), L(key)]
    eye = ar.view(1, L) == ar.view(L, 1)
    allowed = (causal.unsqueeze(0) & valid.unsqueeze(1)) | eye.unsqueeze(0)  # [B, L, L]
    zero = torch.zeros((), dtype=torch.float32, device=valid.device)
    neg = torch.full((), MASK_VALUE, dtype=torch.float32, device=valid.device)
    return torch.where(allowed, zero, neg).unsqueeze(1)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, L, hd]
        att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = torch.softmax(att + bias.to(att.dtype), dim=-1)
        att = self.drop(att)
        y = torch.matmul(att, v).transpose(1, 2).reshape(B, L, D)
        return self.out(y)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, ff_mult: int = 2):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), bias))
        x = x + self.drop(self.ff(self.ln2(x)))
        return x


class SequenceEncoder(nn.Module):
    """Causal Transformer over [B, L, D] item vectors (left-padded); returns states [B, L, D].

    Inputs at padded positions are zeroed; positional embeddings are aligned to the *right*
    (the most recent item always has the same position), so left padding does not shift them.
    """

    def __init__(self, dim: int, layers: int = 2, heads: int = 2, max_len: int = 50, dropout: float = 0.2):
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.in_norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(dim, heads, dropout) for _ in range(layers)])
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        pos = self.pos[self.max_len - L:]  # right-aligned; L <= max_len
        vf = valid.unsqueeze(-1).to(x.dtype)
        h = self.drop(self.in_norm(x + pos.unsqueeze(0))) * vf
        bias = attention_bias(valid)
        for block in self.blocks:
            h = block(h, bias) * vf
        return self.out_norm(h)

    def last(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The state at the last (most recent) position, [B, D]."""
        return self.forward(x, valid)[:, -1]
