"""Hard-masked attention.

Padding is masked *before* the softmax and the masked weights are zeroed after it, so a row whose
keys are all padding (a first turn's "previous query", the pre-turn's utterance) yields a zero
context: not NaN, and not an average of padding vectors.
"""
from __future__ import annotations

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax over ``dim`` restricted to ``mask``; all-False rows give all zeros."""
    mask = mask.to(torch.bool)
    # a finite floor (not -inf): an all-masked row stays finite and its gradient is zero, not NaN
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=dim)
    return weights * mask.to(weights.dtype)


class Attention(nn.Module):
    """General (bilinear) attention: score(q, k) = q · W · k."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.proj = nn.Linear(query_dim, key_dim, bias=False)

    def forward(self, query, keys, mask, values=None):
        """query [B, Q, Dq] or [B, Dq]; keys [B, K, Dk]; mask [B, K] -> (context, weights)."""
        single = query.dim() == 2
        if single:
            query = query.unsqueeze(1)                                  # [B, 1, Dq]
        values = keys if values is None else values
        if keys.shape[1] == 0:                                          # nothing to attend to
            ctx = values.new_zeros(query.shape[0], query.shape[1], values.shape[-1])
            w = values.new_zeros(query.shape[0], query.shape[1], 0)
        else:
            scores = torch.bmm(self.proj(query), keys.transpose(1, 2))  # [B, Q, K]
            w = masked_softmax(scores, mask.unsqueeze(1).expand_as(scores))
            ctx = torch.bmm(w, values)                                  # [B, Q, Dv]
        if single:
            return ctx.squeeze(1), w.squeeze(1)
        return ctx, w


class UtteranceDBAttention(nn.Module):
    """Utterance tokens attend over DB units and DB units over utterance tokens; each side gets
    its context back through a residual, so a unit nobody mentions keeps its own vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.utt_to_db = Attention(dim, dim)
        self.db_to_utt = Attention(dim, dim)
        self.utt_out = nn.Linear(dim, dim)
        self.db_out = nn.Linear(dim, dim)
        self.utt_norm = nn.LayerNorm(dim)
        self.db_norm = nn.LayerNorm(dim)

    def forward(self, utt, utt_mask, units, unit_mask):
        # utt [B, W, H], units [B, U, H] -> same shapes, padding zeroed
        c_utt, _ = self.utt_to_db(utt, units, unit_mask)                # [B, W, H]
        c_db, _ = self.db_to_utt(units, utt, utt_mask)                  # [B, U, H]
        utt_new = self.utt_norm(utt + self.utt_out(c_utt)) * utt_mask.unsqueeze(-1).to(utt.dtype)
        units_new = self.db_norm(units + self.db_out(c_db)) * unit_mask.unsqueeze(-1).to(units.dtype)
        return utt_new, units_new
