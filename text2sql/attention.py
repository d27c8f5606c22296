"""Hard-masked attention.

Padding is masked *before* the softmax and the masked weights are zeroed after it, so a row whose
keys are all padding (a first turn's "previous query", the pre-turn's utterance) yields a zero
context: not NaN, and not an average of padding vectors.
"""
from __future__ import annotations

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """softmax over ``dim`` restricted to ``mask`` (broadcastable to scores); all-False rows -> 0."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    mask = mask.to(torch.bool)
    # A finite floor rather than -inf: an all-masked row then softmaxes to a harmless uniform
    # row (zeroed below) instead of exp(-inf - -inf) = NaN, and its gradient stays finite.
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=dim)
    return weights * mask.to(weights.dtype)


class Attention(nn.Module):
    """General (bilinear) attention: score(q, k) = q · W · k."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.proj = nn.Linear(query_dim, key_dim, bias=False)      # W, applied to the query side

    def forward(self, query, keys, mask=None, values=None):
        """query [B, Q, Dq] or [B, Dq]; keys [B, K, Dk]; mask [B, K] bool; values [B, K, Dv].

        -> context [B, Q, Dv] (or [B, Dv]), weights [B, Q, K] (or [B, K]).
        """
        single = query.dim() == 2
        if single:
            query = query.unsqueeze(1)                                  # [B, 1, Dq]
        values = keys if values is None else values
        scores = torch.bmm(self.proj(query), keys.transpose(1, 2))      # [B, Q, K]
        weights = masked_softmax(scores, None if mask is None else mask.unsqueeze(1))
        context = torch.bmm(weights, values)                            # [B, Q, Dv]
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights


class UtteranceDBAttention(nn.Module):
    """Utterance tokens attend over DB units and DB units over utterance tokens.

    Each side gets its context back through a residual, so a unit the utterance never mentions
    keeps (a normalised) version of its own BERT vector.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.utt_to_db = Attention(dim, dim)
        self.db_to_utt = Attention(dim, dim)
        self.utt_out = nn.Linear(dim, dim)
        self.db_out = nn.Linear(dim, dim)
        self.utt_norm = nn.LayerNorm(dim)
        self.db_norm = nn.LayerNorm(dim)

    def forward(self, utt, utt_mask, units, unit_mask):
        # utt [B, W, H], units [B, U, H] -> the same shapes, padding positions exactly zero
        c_utt, _ = self.utt_to_db(utt, units, unit_mask)                # [B, W, H]
        c_db, _ = self.db_to_utt(units, utt, utt_mask)                  # [B, U, H]
        utt_out = self.utt_norm(utt + self.utt_out(c_utt))
        units_out = self.db_norm(units + self.db_out(c_db))
        # LayerNorm's bias would make padding non-zero; downstream means and attention rely on zeros
        utt_out = utt_out * utt_mask.unsqueeze(-1).to(utt_out.dtype)
        units_out = units_out * unit_mask.unsqueeze(-1).to(units_out.dtype)
        return utt_out, units_out


class JointLayer(nn.Module):
    """A trainable Transformer block over one turn's utterance tokens and DB units together
    (pre-norm: x + attn(LN x), then x + ff(LN x)).

    With a frozen encoder, BERT's own layers cannot learn which words name which columns; a few
    of these on top can (RAT-SQL's encoder, without its relations). Masked as everywhere here:
    padding is neither attended to nor changed, and stays exactly zero.
    """

    def __init__(self, dim: int, dropout: float = 0.0, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, dim // head_dim)
        assert dim % self.heads == 0, f"width {dim} does not split into {self.heads} heads"
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        # start near the identity: the layer then first passes the encoder's vectors through, and
        # the layers after it train as they would without it (at full scale it slowed them down)
        for lin in (self.out, self.ff[-1]):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x, mask):
        # x [B, L, D], mask [B, L] bool -> [B, L, D]
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (D // self.heads) ** 0.5              # [B, heads, L, L]
        weights = masked_softmax(scores, mask[:, None, None, :])
        ctx = (weights @ v).transpose(1, 2).reshape(B, L, D)                      # [B, L, D]
        x = x + self.drop(self.out(ctx))
        x = x + self.drop(self.ff(self.norm2(x)))
        return x * mask.unsqueeze(-1).to(x.dtype)
