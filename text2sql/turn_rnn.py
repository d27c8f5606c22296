"""The turn-level (discourse) RNN: what the conversation has said so far, as an LSTM state.

Each turn is summarised into one vector; an LSTM cell reads the summaries turn by turn. A DB-only
*pre-turn* (the schema encoded with an empty utterance) goes first, so turn 1 also has a history.
``max_turn`` N keeps only the last N-1 turns before the current one (N=1: single-turn model, the
history is the pre-turn alone). States are never detached: one interaction is one training unit
and its gradients reach every turn.
"""
from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, D], [B, L] bool -> [B, D]; an all-padding row gives zeros (never 0/0)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class TurnSummary(nn.Module):
    """One vector per turn: the masked means of its utterance tokens and of its DB units."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(2 * dim, out_dim)

    def forward(self, utt, utt_mask, units, unit_mask):
        # utt [N, W, H], units [N, U, H] -> [N, out]
        return torch.tanh(self.proj(torch.cat([masked_mean(utt, utt_mask), masked_mean(units, unit_mask)], -1)))


class TurnRNN(nn.Module):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.LSTMCell(input_size, hidden_size)

    def forward(self, pre: torch.Tensor, turns: torch.Tensor, max_turn: int):
        """B interactions at once. pre [B, D] (pre-turn summaries), turns [B, T, D] (zero-padded
        past each interaction's last turn).

        Returns (history [B, T, Hd], state [B, T, Hd]): ``history[:, t]`` is the state before turn t
        (pre-turn plus at most ``max_turn - 1`` earlier turns), ``state[:, t]`` the state after reading
        turn t on top of that history, which initialises turn t's decoder. Padded turns come after
        every real one, so the states of real turns never read them; theirs are junk, for the
        caller to drop.
        """
        B, T, _ = turns.shape
        zeros = pre.new_zeros(B, self.hidden_size)
        pre_state = self.cell(pre, (zeros, zeros))                       # ([B, Hd], [B, Hd])
        history, state = [], []
        window = max(int(max_turn), 1) - 1
        chain = [pre_state]          # chain[t]: pre-turn + turns 0..t-1, read in one pass
        for t in range(T):
            start = max(0, t - window)
            if start == 0:
                h, c = chain[t]
            else:
                # a window that does not reach back to turn 1 is re-read from the pre-turn,
                # so "N turns of history" means exactly that
                h, c = pre_state
                for k in range(start, t):
                    h, c = self.cell(turns[:, k], (h, c))
            history.append(h)
            h_t, c_t = self.cell(turns[:, t], (h, c))
            state.append(h_t)
            if start == 0:
                chain.append((h_t, c_t))
        return torch.stack(history, 1), torch.stack(state, 1)
