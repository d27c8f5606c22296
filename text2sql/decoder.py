"""The SQL decoder: an LSTM over target tokens with attention, a tanh fusion and a joint output.

At each step the LSTM reads the previous token's embedding and the previous fused output (input
feeding). Its output attends over the current utterance's tokens, over the DB units and over the
previous turn's SQL; ``tanh(W [input; output])`` fuses the step's input with its output and
contexts. Keywords are scored by a linear layer, DB unit j by the bilinear form ``o · W · u_j``;
one ``log_softmax`` normalises both, so the decoder chooses between "write a keyword" and "point
at a unit" in a single distribution.

Target ids live in the joint space: ``id < K`` is keyword ``id``, ``K + j`` is unit ``j``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from .attention import Attention

NEG = -1e9   # masked logits: finite, so a masked gold token gives a huge loss, not inf/NaN


@dataclass
class DecoderMemory:
    """What one batch of turns decodes against (B turns)."""
    utt: torch.Tensor            # [B, W, H] utterance tokens
    utt_mask: torch.Tensor       # [B, W] bool
    units: torch.Tensor          # [B, U, H] DB units
    unit_mask: torch.Tensor      # [B, U] bool: units the decoder may point at
    prev: torch.Tensor           # [B, P, Dp] previous turn's SQL, encoded
    prev_mask: torch.Tensor      # [B, P] bool (all False on a first turn)
    prev_ids: torch.Tensor | None = None   # [B, P] joint ids of the previous SQL (for copying)
    unit_tables: torch.Tensor | None = None   # [B, U] each unit's table, -1 where padded (--query_tables)

    def select(self, rows) -> "DecoderMemory":
        """The memory of some of the B turns (a slice or index tensor), every field alike."""
        return DecoderMemory(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                                for f in fields(self)})


def unit_table_ids(ids: torch.Tensor, unit_tables: torch.Tensor, n_keywords: int,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Joint ids [B, L] (and which are real, mask [B, L]) -> [B, L] the table of each unit id, -1 for
    keywords and padding. unit_tables [B, U]: each unit's table (-1 where padded)."""
    K, U = n_keywords, unit_tables.shape[1]
    tab = torch.gather(unit_tables, 1, (ids - K).clamp(min=0, max=max(U - 1, 0)))       # [B, L]
    keep = ids >= K if mask is None else mask & (ids >= K)
    return torch.where(keep, tab, torch.full_like(tab, -1))


def same_table(tab: torch.Tensor, unit_tables: torch.Tensor) -> torch.Tensor:
    """Tables tab [B, L] (-1: none), unit_tables [B, U] -> [B, L, U] bool: unit u belongs to
    table tab[b, l]."""
    return (tab.unsqueeze(2) == unit_tables.unsqueeze(1)) & (tab >= 0).unsqueeze(2)


class PreviousQueryEncoder(nn.Module):
    """A BiLSTM over the previous turn's SQL tokens (keyword embeddings and unit vectors)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden // 2, batch_first=True, bidirectional=True)
        self.out_size = 2 * (hidden // 2)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # emb [B, P, H], mask [B, P] -> [B, P, Dp], padding zeroed
        lengths = mask.sum(1)
        if emb.shape[1] == 0 or int(lengths.max()) == 0:
            return emb.new_zeros(emb.shape[0], emb.shape[1], self.out_size)
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.clamp(min=1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=emb.shape[1])
        return out * mask.unsqueeze(-1).to(out.dtype)


class UtteranceRNN(PreviousQueryEncoder):
    """A BiLSTM over a turn's utterance tokens, H wide in and out (H/2 each way; H even)."""

    def __init__(self, dim: int):
        super().__init__(dim, dim)


class Decoder(nn.Module):
    def __init__(self, dim: int, hidden: int, n_keywords: int, state_size: int, prev_size: int,
                 dropout: float = 0.0, query_tables: bool = False):
        super().__init__()
        self.hidden = hidden
        self.n_keywords = n_keywords
        self.keyword_emb = nn.Embedding(n_keywords, dim)
        self.init_h = nn.Linear(state_size, hidden)
        self.init_c = nn.Linear(state_size, hidden)
        self.cell = nn.LSTMCell(dim + hidden, hidden)
        self.att_utt = Attention(hidden, dim)
        self.att_db = Attention(hidden, dim)
        self.att_prev = Attention(hidden, prev_size)
        step_in = dim + hidden                           # the LSTM's input
        step_out = hidden + dim + dim + prev_size        # its output and the three contexts
        self.fuse = nn.Linear(step_in + step_out, hidden)
        self.keyword_out = nn.Linear(hidden, n_keywords)
        self.db_proj = nn.Linear(hidden, dim, bias=False)   # o · W · u_j
        # copying from the previous query: a token of the previous SQL gets o · W_c · p added to
        # its logit, so "the same table as before" is one step away (EditSQL's query copying)
        self.copy_proj = nn.Linear(hidden, prev_size, bias=False)
        self.dropout = nn.Dropout(dropout)
        # --query_tables: a unit whose table the query so far already uses scores o · W · q more
        # (as if q were added to its vector). FROM-less targets never name their tables, so this
        # is how "the same table as the columns before" reaches the pointer.
        self.query_table = nn.Parameter(torch.randn(dim) * 0.1) if query_tables else None

    # ---- which tables the query so far uses (--query_tables) -----------------------------
    def query_table_flags(self, targets: torch.Tensor, mask: torch.Tensor | None,
                          unit_tables: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: targets [B, L] (joint ids), mask [B, L], unit_tables [B, U] -> [B, L, U]
        float, 1 where step i's prefix (targets before i) holds a unit of the unit's table."""
        hit = same_table(unit_table_ids(targets, unit_tables, self.n_keywords, mask), unit_tables)
        hit = hit.to(torch.int32)                                                   # [B, L, U]
        seen = hit.cumsum(1) - hit                       # tokens strictly before each step
        return (seen > 0).to(self.query_table.dtype)

    def add_query_tables(self, flags: torch.Tensor, tok: torch.Tensor, unit_tables: torch.Tensor) -> torch.Tensor:
        """Decoding: flags [B, U] after the tokens so far, the token just chosen tok [B] -> flags
        after it."""
        tab = unit_table_ids(tok.unsqueeze(1), unit_tables, self.n_keywords)        # [B, 1]
        return torch.maximum(flags, same_table(tab, unit_tables)[:, 0].to(flags.dtype))

    # ---- embeddings of tokens in the joint space ----------------------------------------
    def embed(self, ids: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """ids [B, L] (joint space, any value where padded), units [B, U, H] -> [B, L, H]."""
        K = self.n_keywords
        is_kw = ids < K
        kw = self.keyword_emb(ids.clamp(min=0, max=K - 1))                       # [B, L, H]
        unit_idx = (ids - K).clamp(min=0, max=max(units.shape[1] - 1, 0))
        if units.shape[1] == 0:
            return kw
        un = torch.gather(units, 1, unit_idx.unsqueeze(-1).expand(-1, -1, units.shape[-1]))  # [B, L, H]
        return torch.where(is_kw.unsqueeze(-1), kw, un)

    def init_state(self, turn_state: torch.Tensor):
        # turn_state [B, S] -> (h, c) [B, hidden]
        return torch.tanh(self.init_h(turn_state)), torch.tanh(self.init_c(turn_state))

    def recur(self, state, prev_emb, prev_out, mem: DecoderMemory):
        """The recurrent part of one step for B turns -> (state, fused output [B, hidden])."""
        x = torch.cat([prev_emb, prev_out], -1)                     # [B, H + hidden]
        h, c = self.cell(x, state)
        c_utt, _ = self.att_utt(h, mem.utt, mem.utt_mask)           # [B, H]
        c_db, _ = self.att_db(h, mem.units, mem.unit_mask)          # [B, H]
        c_prev, _ = self.att_prev(h, mem.prev, mem.prev_mask)       # [B, Dp]
        out = torch.tanh(self.fuse(torch.cat([x, h, c_utt, c_db, c_prev], -1)))  # [B, hidden]
        return (h, c), self.dropout(out)

    def step(self, state, prev_emb, prev_out, mem: DecoderMemory, flags: torch.Tensor | None = None):
        """One step for B turns -> (state, fused output [B, hidden], log-probs [B, K + U]).
        ``flags`` [B, U]: --query_tables' marks after the tokens so far."""
        state, out = self.recur(state, prev_emb, prev_out, mem)
        return state, out, self.scores(out, mem, flags)

    def scores(self, out: torch.Tensor, mem: DecoderMemory, flags: torch.Tensor | None = None) -> torch.Tensor:
        """Fused outputs [B, hidden] or [B, L, hidden] -> log-probs [B, K + U] or [B, L, K + U];
        flags [B, U] or [B, L, U] with --query_tables."""
        single = out.dim() == 2
        if single:
            out = out.unsqueeze(1)
        kw = self.keyword_out(out)                                           # [B, L, K]
        proj = self.db_proj(out)                                             # [B, L, H]
        db = torch.einsum("blh,buh->blu", proj, mem.units)                   # [B, L, U]
        if self.query_table is not None:
            if flags is None:
                raise ValueError("--query_tables: the decoder needs the tables of the query so far")
            flags = flags.unsqueeze(1) if flags.dim() == 2 else flags
            db = db + (proj @ self.query_table).unsqueeze(-1) * flags        # [B, L, U]
        logits = torch.cat([kw, db], -1)                                     # [B, L, K + U]
        if mem.prev_ids is not None and mem.prev.shape[1] > 0:
            copy = torch.einsum("bld,bpd->blp", self.copy_proj(out), mem.prev)   # [B, L, P]
            copy = copy * mem.prev_mask.unsqueeze(1).to(copy.dtype)
            ids = mem.prev_ids.clamp(min=0, max=logits.shape[-1] - 1).unsqueeze(1).expand(-1, out.shape[1], -1)
            logits = logits.scatter_add(2, ids, copy)
        unit_ok = torch.cat([torch.ones_like(kw[:, 0], dtype=torch.bool), mem.unit_mask], -1)   # [B, K + U]
        logits = logits.masked_fill(~unit_ok.unsqueeze(1), NEG)
        logp = torch.log_softmax(logits, -1)
        return logp[:, 0] if single else logp

    def forward(self, turn_state, targets, mem: DecoderMemory, go: int, targets_mask=None):
        """Teacher forcing. targets [B, L] joint ids; returns log-probs [B, L, K + U].

        Only the LSTM, the attention and the fusion are recurrent; the output layer runs once over
        all L steps (one large matrix product instead of L small ones, forward and backward)."""
        B, L = targets.shape
        state = self.init_state(turn_state)
        prev_out = turn_state.new_zeros(B, self.hidden)
        inputs = torch.cat([targets.new_full((B, 1), go), targets[:, :-1]], 1)   # [B, L] shifted
        emb = self.embed(inputs, mem.units)                                   # [B, L, H]
        outs = []
        for i in range(L):
            state, prev_out = self.recur(state, emb[:, i], prev_out, mem)
            outs.append(prev_out)
        flags = None
        if self.query_table is not None:
            flags = self.query_table_flags(targets, targets_mask, mem.unit_tables)
        return self.scores(torch.stack(outs, 1), mem, flags)                  # [B, L, K + U]
