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


def sequence_loss(logp, targets, mask, n_keywords: int, weighting: str, n_interactions: int):
    """-> (loss, keyword part, DB part), each already divided by the weighting's denominator.

    ``sum``: summed token losses per interaction (EditSQL's unit of training); ``per_step``: the
    mean over target tokens. Denominators are clamped so an all-padding batch gives 0, not NaN.
    """
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)          # [Nt, L]
    nll = nll.masked_fill(~mask, 0.0)
    is_kw = targets < n_keywords
    kw = nll.masked_fill(~is_kw, 0.0).sum()
    db = nll.masked_fill(is_kw, 0.0).sum()
    if weighting == "per_step":
        denom = mask.sum().clamp(min=1).to(nll.dtype)
    elif weighting == "sum":
        denom = torch.tensor(float(max(n_interactions, 1)), dtype=nll.dtype, device=nll.device)
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}")
    return (kw + db) / denom, kw / denom, db / denom


@dataclass
class Meter:
    """Accumulates teacher-forced metrics over batches."""
    n_keywords: int
    turn_ratios: list = field(default_factory=list)
    turns: int = 0
    strings_right: int = 0
    positions: int = 0
    positions_right: int = 0
    kw_positions: int = 0
    kw_right: int = 0
    db_positions: int = 0
    db_right: int = 0
    loss_sum: float = 0.0
    kw_loss_sum: float = 0.0
    db_loss_sum: float = 0.0
    batches: int = 0
    by_turn: dict = field(default_factory=dict)   # turn index -> [turns, strings right]

    @torch.no_grad()
    def add(self, logp, targets, mask, turn_index=None, loss=None, kw_loss=None, db_loss=None):
        pred = logp.argmax(-1)                                   # [Nt, L]
        right = (pred == targets) & mask
        per_turn_len = mask.sum(1)
        per_turn_right = right.sum(1)
        valid = per_turn_len > 0
        ratios = per_turn_right[valid].double() / per_turn_len[valid].double()
        self.turn_ratios += ratios.tolist()
        strings = (per_turn_right == per_turn_len) & valid
        self.turns += int(valid.sum())
        self.strings_right += int(strings.sum())
        self.positions += int(mask.sum())
        self.positions_right += int(right.sum())
        is_kw = (targets < self.n_keywords) & mask
        is_db = (targets >= self.n_keywords) & mask
        self.kw_positions += int(is_kw.sum())
        self.kw_right += int((right & is_kw).sum())
        self.db_positions += int(is_db.sum())
        self.db_right += int((right & is_db).sum())
        if turn_index is not None:
            for t, ok in zip(turn_index[valid].tolist(), strings[valid].tolist()):
                c = self.by_turn.setdefault(t, [0, 0])
                c[0] += 1
                c[1] += int(ok)
        if loss is not None:
            self.loss_sum += float(loss)
            self.kw_loss_sum += float(kw_loss)
            self.db_loss_sum += float(db_loss)
            self.batches += 1

    def summary(self) -> dict:
        pct = lambda a, b: 100.0 * a / b if b else 0.0   # noqa: E731
        nb = max(self.batches, 1)
        return {
            "loss": self.loss_sum / nb,
            "keyword_loss": self.kw_loss_sum / nb,
            "db_loss": self.db_loss_sum / nb,
            "token_acc": 100.0 * sum(self.turn_ratios) / len(self.turn_ratios) if self.turn_ratios else 0.0,
            "token_acc_pooled": pct(self.positions_right, self.positions),
            "string_acc": pct(self.strings_right, self.turns),
            "keyword_acc": pct(self.kw_right, self.kw_positions),
            "db_acc": pct(self.db_right, self.db_positions),
            "turns": self.turns,
            "string_acc_by_turn": {str(t + 1): pct(c[1], c[0]) for t, c in sorted(self.by_turn.items())},
        }
