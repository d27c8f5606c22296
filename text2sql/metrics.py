"""Loss and teacher-forced metrics, computed the way EditSQL reports them.

Token accuracy ("gold-passing TOKEN_ACCURACY" in EditSQL's logs): for each turn, the share of
target positions (end token included) where the teacher-forced argmax is the gold token, then the
mean of those per-turn ratios. The pooled count (all correct positions over all positions) is
reported apart as ``token_acc_pooled``. String accuracy: turns with every position right, which
is exactly the rate at which greedy decoding reproduces the gold. Keyword and DB-unit accuracy
pool the positions whose gold is a keyword or a unit. All in percent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .decoder import NEG

# a log-probability below this is an output the decoder masked (its logit was NEG)
NEG_LOGP = NEG / 10


def sequence_loss(logp, targets, mask, n_keywords: int, weighting: str, n_interactions: int,
                  denominator: torch.Tensor | float | None = None, smoothing: float = 0.0,
                  teacher: torch.Tensor | None = None, distill: float = 0.0):
    """-> (loss, keyword part, DB part), each already divided by the weighting's denominator.

    ``sum``: summed token losses per interaction (EditSQL's unit of training); ``per_step``: the
    mean over target tokens. Denominators are clamped so an all-padding batch gives 0, not NaN.
    ``denominator`` overrides it: a distributed run divides each rank's sums by the global count,
    so the summed gradients equal one process's over the whole batch. ``smoothing`` (label
    smoothing) mixes each token's NLL with its cross-entropy against the uniform distribution over
    the outputs not masked at that step. ``teacher`` [Nt, L, V] (log-probabilities, NEG-like where
    an output is impossible) with ``distill`` = a: each token's loss becomes (1 - a) times that loss
    plus a times its cross-entropy against the teacher's distribution, whose gradient with
    respect to the logits is a (p - q): zero where the student already says what the teacher says.
    It counts towards the keyword or DB part by the gold token's kind, as the NLL does.
    """
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)          # [Nt, L]
    distilled = teacher is not None and distill > 0
    # the outputs this step could choose: a padded unit's logit is NEG
    ok = logp > NEG_LOGP if smoothing > 0 or distilled else None         # [Nt, L, V]
    if smoothing > 0:
        # label smoothing against the uniform distribution over what this step could output: a
        # padded unit is left out, not counted as a -1e9 log-probability
        uniform = -(logp.masked_fill(~ok, 0.0)).sum(-1) / ok.sum(-1).clamp(min=1)   # [Nt, L]
        nll = (1.0 - smoothing) * nll + smoothing * uniform
    if distilled:
        if teacher.shape != logp.shape:
            raise ValueError(f"teacher distribution {tuple(teacher.shape)} against the model's {tuple(logp.shape)}")
        # exp of a masked output's NEG-sized log-probability is exactly 0; the mask also keeps the
        # student's -1e8-sized log-probabilities out of the product where a teacher disagrees
        q = teacher.float().exp().masked_fill(~ok, 0.0)                  # [Nt, L, V]
        cross = -(q * logp.masked_fill(~ok, 0.0)).sum(-1)                # [Nt, L]
        nll = (1.0 - distill) * nll + distill * cross
    nll = nll.masked_fill(~mask, 0.0)
    is_kw = targets < n_keywords
    kw = nll.masked_fill(~is_kw, 0.0).sum()
    db = nll.masked_fill(is_kw, 0.0).sum()
    if denominator is not None:
        denom = torch.as_tensor(denominator, dtype=nll.dtype, device=nll.device).clamp(min=1)
    elif weighting == "per_step":
        denom = mask.sum().clamp(min=1).to(nll.dtype)
    elif weighting == "sum":
        denom = torch.tensor(float(max(n_interactions, 1)), dtype=nll.dtype, device=nll.device)
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}")
    return (kw + db) / denom, kw / denom, db / denom


# what Meter counts, in the order of its on-device accumulator
_COUNTS = ("turns", "strings_right", "positions", "positions_right", "kw_positions", "kw_right",
           "db_positions", "db_right", "ratio_sum")


@dataclass
class Meter:
    """Accumulates teacher-forced metrics over batches.

    Counts stay on the model's device and are read back once, in ``summary``: a training step
    adds to them without a host sync. Losses arrive already on the host (``add_loss``)."""
    n_keywords: int
    acc: torch.Tensor | None = None               # [len(_COUNTS)] float64 sums
    by_turn: dict = field(default_factory=dict)   # turn index -> [turns, strings right]
    loss_sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0])   # loss, keyword, DB parts
    batches: int = 0

    def add_loss(self, loss: float, kw_loss: float, db_loss: float):
        """One batch's losses (a training step reads them back anyway, with its other figures)."""
        for i, v in enumerate((loss, kw_loss, db_loss)):
            self.loss_sums[i] += v
        self.batches += 1

    @torch.no_grad()
    def add(self, logp, targets, mask, turn_index=None):
        pred = logp.argmax(-1)                                   # [Nt, L]
        right = (pred == targets) & mask
        per_turn_len = mask.sum(1)
        per_turn_right = right.sum(1)
        valid = per_turn_len > 0
        ratios = per_turn_right.double() / per_turn_len.clamp(min=1).double()
        strings = (per_turn_right == per_turn_len) & valid
        is_kw = (targets < self.n_keywords) & mask
        is_db = (targets >= self.n_keywords) & mask
        row = torch.stack([valid.sum().double(), strings.sum().double(), mask.sum().double(),
                           right.sum().double(), is_kw.sum().double(), (right & is_kw).sum().double(),
                           is_db.sum().double(), (right & is_db).sum().double(), (ratios * valid).sum()])
        self.acc = row if self.acc is None else self.acc + row
        if turn_index is not None:      # evaluation only: this one reads back per batch
            for t, ok, v in zip(turn_index.tolist(), strings.tolist(), valid.tolist()):
                if v:
                    c = self.by_turn.setdefault(t, [0, 0])
                    c[0] += 1
                    c[1] += int(ok)

    def counts(self) -> dict:
        vals = [0.0] * len(_COUNTS) if self.acc is None else self.acc.tolist()
        return dict(zip(_COUNTS, vals))

    def summary(self) -> dict:
        c = self.counts()
        pct = lambda a, b: 100.0 * a / b if b else 0.0   # noqa: E731
        nb = max(self.batches, 1)
        return {
            "loss": self.loss_sums[0] / nb,
            "keyword_loss": self.loss_sums[1] / nb,
            "db_loss": self.loss_sums[2] / nb,
            "token_acc": pct(c["ratio_sum"], c["turns"]),
            "token_acc_pooled": pct(c["positions_right"], c["positions"]),
            "string_acc": pct(c["strings_right"], c["turns"]),
            "keyword_acc": pct(c["kw_right"], c["kw_positions"]),
            "db_acc": pct(c["db_right"], c["db_positions"]),
            "turns": int(c["turns"]),
            "string_acc_by_turn": {str(t + 1): pct(k[1], k[0]) for t, k in sorted(self.by_turn.items())},
        }
