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

import contextlib
import math
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from .attention import Attention, masked_softmax
from .tensors import to_device

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
    unit_links: torch.Tensor | None = None    # [B, U, F] name-match features of each unit (--link_bonus)
    # filled by Decoder.prepare: the memory already multiplied by the step weights that act on it
    keys: tuple | None = None      # 3 x [B, K, hidden]: utt, units, prev keys times each attention's W
    values: tuple | None = None    # 3 x [B, K, hidden]: the same times the fusion's column block
    weights: tuple | None = None   # (W_rec [4 hidden, 2 hidden], W_fuse_rec [hidden, 2 hidden]): shared
    grad_log: tuple | None = None  # the steps' attention and weight gradients, summed once after the loop

    def select(self, rows) -> "DecoderMemory":
        """The memory of some of the B turns (a slice or index tensor), every field alike."""
        def pick(name, v):
            if v is None or name in ("weights", "grad_log"):
                return v
            return tuple(x[rows] for x in v) if isinstance(v, tuple) else v[rows]
        return DecoderMemory(**{f.name: pick(f.name, getattr(self, f.name)) for f in fields(self)})


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


def mean_distribution(logps: list[torch.Tensor]) -> torch.Tensor:
    """Log-probabilities of several models, alike in shape -> the log of their mean probability
    (an ensemble's distribution; not the mean of the logs), in float32."""
    if len(logps) == 1:
        return logps[0]
    return torch.logsumexp(torch.stack([lp.float() for lp in logps]), 0) - math.log(len(logps))


def _autocast_state(t: torch.Tensor) -> dict:
    """The autocast settings in force, for a custom backward to run under the same (--amp: its
    saved tensors mix bf16 and float32, as the forward's products did)."""
    kind = t.device.type
    return dict(device_type=kind, enabled=torch.is_autocast_enabled(kind), dtype=torch.get_autocast_dtype(kind))


def _rows_times(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """v [B, D], m [B, K, D] -> [B, K]: each row's vector against each of its K vectors."""
    return torch.bmm(v.unsqueeze(1), m.transpose(1, 2)).squeeze(1)


class _StepAttention(torch.autograd.Function):
    """One step's attention of h [n, hidden] over the first n rows of prepared keys and values
    [B, K, hidden] (mask [n, K]) -> the context's share of the fusion [n, hidden]. n < B while
    teacher forcing rows sorted by length: the rows whose targets have ended drop out.

    Its backward gives h its gradient at once and logs what the keys' and values' gradients are
    made of, for :class:`_DeferredMemoryGrad` to sum over all steps in one product: accumulating
    them step by step writes a [B, K, hidden] tensor per step, which was most of a batched step's
    backward pass on CPU."""

    @staticmethod
    def forward(ctx, h, keys, values, mask, log):
        n = h.shape[0]
        keys, values = keys[:n], values[:n]          # views: the first n rows are the active ones
        # Mat-vec products are written as a row times a transposed matrix ([B, 1, hidden] x
        # [B, hidden, K]): as [B, K, hidden] x [B, hidden, 1], CPU bmm ran them 5-14x slower.
        weights = masked_softmax(_rows_times(h, keys), mask)                           # [n, K], 0 on padding
        ctx.save_for_backward(h, keys, values, weights)
        ctx.log, ctx.amp = log, _autocast_state(h)
        return torch.bmm(weights.unsqueeze(1), values).squeeze(1)                     # [n, hidden]

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast(**ctx.amp):
            return _StepAttention._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        if ctx.log is None:
            raise RuntimeError("decoder memory prepared with gradients off, then differentiated")
        h, keys, values, weights = ctx.saved_tensors
        d_weights = _rows_times(grad, values)                                          # [n, K]
        # softmax backward; masked and all-padding entries have weight 0, so they get 0
        d_scores = weights * (d_weights - (weights * d_weights).sum(-1, keepdim=True))  # [n, K]
        ctx.log.append((d_scores, h, weights, grad))
        return torch.bmm(d_scores.unsqueeze(1), keys).squeeze(1), None, None, None, None


class _DeferredMemoryGrad(torch.autograd.Function):
    """The identity on prepared (keys, values); every step's attention reads its output, so its
    backward runs after all theirs and turns their logs into the two gradients:
    d keys = sum over steps of d_scores x h, d values = sum of weights x grad. A graph kept with
    retain_graph and differentiated for inputs that bypass the memory would leave its steps' logs
    behind for the next pass; nothing here does that (one backward per forward)."""

    @staticmethod
    def forward(ctx, keys, values, log):
        ctx.log, ctx.amp = log, _autocast_state(keys)
        return keys.view_as(keys), values.view_as(values)

    @staticmethod
    def backward(ctx, d_keys, d_values):
        with torch.autocast(**ctx.amp):
            return _DeferredMemoryGrad._backward(ctx, d_keys, d_values)

    @staticmethod
    def _backward(ctx, d_keys, d_values):
        if ctx.log:
            # steps with fewer active rows (a prefix of the B) padded with zero rows: [B, T, .]
            B = d_keys.shape[0]
            d_scores, h, weights, grad = (
                torch.stack([nn.functional.pad(t, (0, 0, 0, B - t.shape[0])) if t.shape[0] < B else t
                             for t in x], 1) for x in zip(*ctx.log))
            d_keys = d_keys + torch.bmm(d_scores.transpose(1, 2), h)                    # [B, K, hidden]
            d_values = d_values + torch.bmm(weights.transpose(1, 2), grad)              # [B, K, hidden]
            ctx.log.clear()
        return d_keys, d_values, None


class _StepProduct(torch.autograd.Function):
    """x [B, D] @ w.T for a weight w [O, D] that every step multiplies. Its backward gives x its
    gradient at once and logs (x, grad) for :class:`_DeferredWeightGrad`, so that w's gradient is
    one [O, N] x [N, D] product after the loop (N: the rows of all steps) rather than a small product and an [O, D]
    accumulation at every step."""

    @staticmethod
    def forward(ctx, x, w, log):
        ctx.save_for_backward(x, w)
        ctx.log, ctx.amp = log, _autocast_state(x)
        return x @ w.T

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast(**ctx.amp):
            x, w = ctx.saved_tensors
            ctx.log.append((x, grad))
            return grad @ w, None, None


def _product(x: torch.Tensor, w: torch.Tensor, log: list | None) -> torch.Tensor:
    return x @ w.T if log is None else _StepProduct.apply(x, w, log)


def _cpu_autocast(t: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype where autocast is on for a CPU tensor, else None."""
    on = t.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    return torch.get_autocast_dtype("cpu") if on else None


class _DeferredWeightGrad(torch.autograd.Function):
    """The identity on a step weight; every step's :class:`_StepProduct` reads its output, so its
    backward runs after theirs and sums their logs into the weight's gradient."""

    @staticmethod
    def forward(ctx, w, log):
        ctx.log, ctx.amp = log, _autocast_state(w)
        return w.view_as(w)

    @staticmethod
    def backward(ctx, d_w):
        with torch.autocast(**ctx.amp):
            if ctx.log:
                x, grad = (torch.cat(t, 0) for t in zip(*ctx.log))               # [N, D], [N, O]
                d_w = d_w + grad.T @ x                                              # [O, D]
                ctx.log.clear()
            return d_w, None


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
                 dropout: float = 0.0, query_tables: bool = False, link_features: int = 0,
                 input_feeding: bool = True):
        super().__init__()
        self.hidden = hidden
        # without input feeding the LSTM reads only the previous token: the weights stay the same
        # shape (the previous output's columns multiply zeros), and teacher forcing no longer has
        # to run step by step (``_outputs_parallel``)
        self.input_feeding = input_feeding
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
        # --link_bonus: unit j's logit gains (W_l o + b) · f_j, f_j its name-match features. The
        # encoder's link features reach the pointer only through the unit vectors and a bilinear
        # form; this puts "the utterance names this column" one weight away from the score, and
        # the step decides how much each feature counts (a column after "where" vs. a table).
        # Zero-initialised: training starts from the model without it.
        self.link_gate = None
        if link_features:
            self.link_gate = nn.Linear(hidden, link_features)
            nn.init.zeros_(self.link_gate.weight)
            nn.init.zeros_(self.link_gate.bias)

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

    # ---- one step ----------------------------------------------------------------------------
    # A step is, as written in the design: x = [token embedding; previous fused output];
    # (h, c) = LSTMCell(x); contexts = attention of h over the utterance, the units and the previous
    # SQL (score h · W · k); out = tanh(fuse([x; h; contexts])). It is computed here in an order
    # that gives the same numbers (up to float rounding; tests/test_model.py checks it against the
    # textbook order) but keeps weight products out of the loop over steps: every matrix that
    # multiplies something known before the loop (the token embeddings, the attention keys, the
    # contexts' values) is applied once per sequence, by `input_terms` and `prepare`. What stays in
    # the loop multiplies only [prev_out; h]. On CPU the backward pass of a step was dominated by
    # writes whose size does not depend on the batch's rows: each small product's weight gradient
    # (2.1 M numbers a step at the default sizes, now 0.9 M) and each attention's gradient for its
    # whole memory ([B, K, .] a step, now summed once after the loop by _DeferredMemoryGrad).
    # Measured in docs/performance.md ("The decoder's step").

    def _fuse_blocks(self):
        """The fusion weight's column blocks: [emb | prev_out | h | c_utt | c_db | c_prev]."""
        H, hid = self.keyword_emb.embedding_dim, self.hidden
        sizes = [H, hid, hid, H, H, self.fuse.in_features - 2 * H - 2 * hid - H]
        return self.fuse.weight.split(sizes, 1)

    def prepare(self, mem: DecoderMemory) -> DecoderMemory:
        """The memory with its step-invariant products done once (a prepared memory is returned as is)."""
        if mem.keys is not None:
            return mem
        w_emb, w_prev_out, w_h, w_utt, w_db, w_prev = self._fuse_blocks()
        H = self.keyword_emb.embedding_dim
        keys = tuple(k @ att.proj.weight for k, att in                            # 3 x [B, K, hidden]
                     ((mem.utt, self.att_utt), (mem.units, self.att_db), (mem.prev, self.att_prev)))
        values = (mem.utt @ w_utt.T, mem.units @ w_db.T, mem.prev @ w_prev.T)    # 3 x [B, K, hidden]
        w_rec = torch.cat([self.cell.weight_ih[:, H:], self.cell.weight_hh], 1)   # [4 hidden, 2 hidden]
        w_fuse_rec = torch.cat([w_prev_out, w_h], 1)                              # [hidden, 2 hidden]
        weights, logs = (w_rec, w_fuse_rec), None
        low = _cpu_autocast(w_rec)
        if low is not None:
            # CPU autocast (--amp): bf16 pays for the products above, not for the step's small
            # ones. Each step would cast both step weights again (they are not parameters, so
            # autocast's cache misses them), and CPU bmm runs the attention's [B, 1, K] mat-vecs
            # 1.1-3x slower in bf16 than in float32: cast the weights once, keep the memory in
            # float32 (recur runs the step's attention with autocast off)
            weights = tuple(w.to(low) for w in weights)
            keys, values = tuple(k.float() for k in keys), tuple(v.float() for v in values)
        if torch.is_grad_enabled():
            logs = tuple([] for _ in range(5))          # 3 attentions, then the 2 step weights
            pairs = [_DeferredMemoryGrad.apply(k, v, log) for k, v, log in zip(keys, values, logs)]
            keys, values = tuple(k for k, _ in pairs), tuple(v for _, v in pairs)
            weights = tuple(_DeferredWeightGrad.apply(w, log) for w, log in zip(weights, logs[3:]))
        return replace(mem, keys=keys, values=values, weights=weights, grad_log=logs)

    def input_terms(self, emb: torch.Tensor):
        """Token embeddings [..., H] -> their share of the LSTM gates [..., 4 hidden] and of the
        fusion [..., hidden], biases included."""
        H = emb.shape[-1]
        gates = emb @ self.cell.weight_ih[:, :H].T + self.cell.bias_ih + self.cell.bias_hh
        return gates, emb @ self._fuse_blocks()[0].T + self.fuse.bias

    def recur(self, state, terms, prev_out, mem: DecoderMemory):
        """The recurrent part of one step for n turns -> (state, fused output [n, hidden]).
        terms: ``input_terms`` of the step's input tokens. The n turns are the memory's first n
        rows (n = B but in ``_outputs_stepped``, which drops ended rows)."""
        mem = self.prepare(mem)      # a no-op on a prepared memory; callers looping prepare once
        gates_in, fuse_in = terms                                   # [n, 4 hidden], [n, hidden]
        w_rec, w_fuse_rec = mem.weights
        logs = mem.grad_log or (None,) * 5           # None: prepared without gradients
        h, c = state
        if not self.input_feeding:
            prev_out = torch.zeros_like(prev_out)
        gates = gates_in + _product(torch.cat([prev_out, h], -1), w_rec, logs[3])       # [n, 4 hidden]
        i, f, g, o = gates.chunk(4, -1)                             # nn.LSTMCell's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        fused = fuse_in + _product(torch.cat([prev_out, h], -1), w_fuse_rec, logs[4])   # [n, hidden]
        n = h.shape[0]
        masks = tuple(m[:n] for m in (mem.utt_mask, mem.unit_mask, mem.prev_mask))   # views, [n, K]
        # under CPU autocast the attention runs in float32, over the float32 memory prepare made
        cpu_amp = _cpu_autocast(h) is not None
        query = h.float() if cpu_amp else h
        with torch.autocast("cpu", enabled=False) if cpu_amp else contextlib.nullcontext():
            for keys, values, mask, log in zip(mem.keys, mem.values, masks, logs):
                fused = fused + _StepAttention.apply(query, keys, values, mask, log)     # [n, hidden]
        return (h, c), self.dropout(torch.tanh(fused))

    def step(self, state, prev_emb, prev_out, mem: DecoderMemory, flags: torch.Tensor | None = None):
        """One step for B turns -> (state, fused output [B, hidden], log-probs [B, K + U]).
        prev_emb [B, H]: the input token's embedding; mem: best prepared once. ``flags`` [B, U]:
        --query_tables' marks after the tokens so far."""
        state, out = self.recur(state, self.input_terms(prev_emb), prev_out, mem)
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
        if self.link_gate is not None:
            if mem.unit_links is None:
                raise ValueError("--link_bonus: the decoder needs its units' link features")
            db = db + torch.einsum("blf,buf->blu", self.link_gate(out), mem.unit_links.to(db.dtype))
        logits = torch.cat([kw, db], -1)                                     # [B, L, K + U]
        if mem.prev_ids is not None and mem.prev.shape[1] > 0:
            copy = torch.einsum("bld,bpd->blp", self.copy_proj(out), mem.prev)   # [B, L, P]
            copy = copy * mem.prev_mask.unsqueeze(1).to(copy.dtype)
            ids = mem.prev_ids.clamp(min=0, max=logits.shape[-1] - 1).unsqueeze(1).expand(-1, out.shape[1], -1)
            logits = logits.scatter_add(2, ids, copy)
        unit_ok = torch.cat([torch.ones_like(kw[:, 0], dtype=torch.bool), mem.unit_mask], -1)   # [B, K + U]
        logits = logits.masked_fill(~unit_ok.unsqueeze(1), NEG)
        # float32 under any autocast: CUDA's autocast already runs log_softmax in float32, CPU's
        # would keep bf16 (8 bits of mantissa), and the losses and beam scores sum these
        logp = torch.log_softmax(logits.float(), -1)
        return logp[:, 0] if single else logp

    def forward(self, turn_state, targets, mem: DecoderMemory, go: int, targets_mask=None,
                lengths: list[int] | None = None):
        """Teacher forcing. targets [B, L] joint ids; returns log-probs [B, L, K + U].

        Only the LSTM, the attention and the fusion are recurrent; the output layer runs once over
        all L steps (one large matrix product instead of L small ones, forward and backward).
        ``lengths`` (host ints, B of them): each target's real length; steps past a row's length
        are then not computed (their outputs are zero: padding, masked by every loss and metric)."""
        B, L = targets.shape
        inputs = torch.cat([targets.new_full((B, 1), go), targets[:, :-1]], 1)   # [B, L] shifted
        emb = self.embed(inputs, mem.units)                                       # [B, L, H]
        flags = None
        if self.query_table is not None:
            flags = self.query_table_flags(targets, targets_mask, mem.unit_tables)
        if not self.input_feeding:
            outputs = self._outputs_parallel(turn_state, emb, mem)
        else:
            outputs = self._outputs_stepped(turn_state, emb, mem, lengths)
        return self.scores(outputs, mem, flags)                                  # [B, L, K + U]

    def _outputs_stepped(self, turn_state, emb, mem: DecoderMemory,
                         lengths: list[int] | None = None) -> torch.Tensor:
        """The fused outputs [B, L, hidden] of input tokens emb [B, L, H], step by step: each step
        reads the one before's output.

        With ``lengths``, the rows run longest first and step i computes only the rows still
        going, a prefix of them: a batch's targets differ widely in length (on SParC train, in
        batches of 16 interactions, 37% of the [turns, longest] grid is real tokens), and the
        step's products are most of a frozen-encoder training step on CPU. The input tokens'
        products are computed for the real positions alone, packed step after step."""
        B, L = emb.shape[:2]
        if lengths is None or mem.keys is not None or min(lengths, default=L) >= L:
            return self._outputs_full(turn_state, emb, mem)
        order = sorted(range(B), key=lambda r: -lengths[r])          # stable: ties keep their order
        active = [sum(1 for n in lengths if n > i) for i in range(L)]   # rows still going at step i
        active = [n for n in active if n > 0]
        if not active:                                  # every target empty: nothing to run
            return emb.new_zeros(B, L, self.hidden)
        # each real position's place in the [B * L] grid, step by step, the rows of a step in
        # the sorted order: the input tokens' products and the outputs live packed in this order
        where = [order[r] * L + i for i, n in enumerate(active) for r in range(n)]
        perm = to_device(order, torch.long, emb.device)          # pinned, non-blocking: no host sync
        idx = to_device(where, torch.long, emb.device)
        mem = self.prepare(mem.select(perm))
        h, c = self.init_state(turn_state[perm])
        prev_out = turn_state.new_zeros(B, self.hidden)
        gates_in, fuse_in = self.input_terms(emb.reshape(B * L, -1)[idx])   # [N, 4 hidden], [N, hidden]
        outs = []
        for n, g_in, f_in in zip(active, gates_in.split(active), fuse_in.split(active)):
            if n < h.shape[0]:
                h, c, prev_out = h[:n], c[:n], prev_out[:n]
            (h, c), prev_out = self.recur((h, c), (g_in, f_in), prev_out, mem)
            outs.append(prev_out)                                   # [n, hidden]
        # one scatter into the padded grid (one gather back in the backward pass)
        packed = torch.cat(outs, 0)                                 # [N, hidden], N = sum of lengths
        return packed.new_zeros(B * L, self.hidden).index_copy(0, idx, packed).view(B, L, self.hidden)

    def _outputs_full(self, turn_state, emb, mem: DecoderMemory) -> torch.Tensor:
        """``_outputs_stepped`` over every row for all L steps."""
        mem = self.prepare(mem)
        state = self.init_state(turn_state)
        prev_out = turn_state.new_zeros(emb.shape[0], self.hidden)
        gates_in, fuse_in = self.input_terms(emb)                 # [B, L, 4 hidden], [B, L, hidden]
        # unbind, not [:, i]: one backward node gathers the L step gradients, where L slices would
        # each write a zero [B, L, .] tensor with one step's gradient in it
        outs = []
        for terms in zip(gates_in.unbind(1), fuse_in.unbind(1)):
            state, prev_out = self.recur(state, terms, prev_out, mem)
            outs.append(prev_out)
        return torch.stack(outs, 1)

    def _outputs_parallel(self, turn_state, emb, mem: DecoderMemory) -> torch.Tensor:
        """The same without input feeding: the numbers of stepping ``recur`` with a zero previous
        output (tests/test_model.py), computed as one fused LSTM call over the L steps and each
        attention and the fusion as one product over all of them, with no loop in Python."""
        H = self.keyword_emb.embedding_dim
        h0, c0 = self.init_state(turn_state)                                    # [B, hidden] each
        cell = self.cell
        # LSTMCell's weights as a one-layer nn.LSTM's: only the token's columns of weight_ih
        hs = torch.lstm(emb, (h0.unsqueeze(0), c0.unsqueeze(0)),
                        [cell.weight_ih[:, :H], cell.weight_hh, cell.bias_ih, cell.bias_hh],
                        True, 1, 0.0, self.training, False, True)[0]         # [B, L, hidden]
        w_emb, _, w_h, w_utt, w_db, w_prev = self._fuse_blocks()
        fused = emb @ w_emb.T + self.fuse.bias + hs @ w_h.T                     # [B, L, hidden]
        for memory, mask, att, w in ((mem.utt, mem.utt_mask, self.att_utt, w_utt),
                                     (mem.units, mem.unit_mask, self.att_db, w_db),
                                     (mem.prev, mem.prev_mask, self.att_prev, w_prev)):
            keys = memory @ att.proj.weight                                     # [B, K, hidden]
            weights = masked_softmax(hs @ keys.transpose(1, 2), mask.unsqueeze(1))   # [B, L, K]
            fused = fused + weights @ (memory @ w.T)                            # [B, L, hidden]
        return self.dropout(torch.tanh(fused))
