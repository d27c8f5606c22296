"""The keyword vocabulary, and target sequences as ids in the decoder's joint output space.

The decoder scores ``len(vocab)`` keyword tokens and then the DB units of the turn's schema, so
a target id ``k < len(vocab)`` is a keyword and ``len(vocab) + j`` is unit ``j`` of the schema.
The vocabulary is built from training targets (plus the SQL grammar's own tokens, so that a
keyword missing from a small training set can still be decoded) and saved with each run.
"""
from __future__ import annotations

import json
from collections import Counter

from .schema import Schema
from .sql_tokens import AGGREGATES, KEYWORDS, OPERATORS, PUNCT, VALUE

PAD, GO, EOS, UNK = "<pad>", "<go>", "<eos>", "<unk>"
SPECIALS = (PAD, GO, EOS, UNK)
GRAMMAR = sorted(KEYWORDS | OPERATORS | PUNCT | {VALUE, "*", "group_by", "order_by"} | set(AGGREGATES))


class Vocab:
    def __init__(self, tokens: list[str]):
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        for s in SPECIALS:
            assert s in self.index, f"vocabulary lacks {s}"
        self.pad, self.go, self.eos, self.unk = (self.index[s] for s in SPECIALS)

    def __len__(self):
        return len(self.tokens)

    def __contains__(self, token):
        return token in self.index

    @classmethod
    def build(cls, targets: list[list[str]], schemas: list[Schema] = (), min_count: int = 1) -> "Vocab":
        """Keyword tokens of ``targets`` (units of ``schemas`` excluded), grammar tokens first."""
        units = set()
        for s in schemas:
            units.update(s.units)
        counts = Counter(t for seq in targets for t in seq if t not in units and "." not in t)
        extra = sorted(t for t, c in counts.items() if c >= min_count and t not in GRAMMAR)
        return cls(list(SPECIALS) + GRAMMAR + extra)

    def save(self, path: str):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.tokens, f, indent=0)

    @classmethod
    def load(cls, path: str) -> "Vocab":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    # ---- targets --------------------------------------------------------------------------
    def encode(self, tokens: list[str], schema: Schema) -> list[int]:
        """Target tokens -> ids in the joint space, end token appended."""
        out = []
        for t in tokens:
            u = schema.unit_index(t) if ("." in t or schema.table_index(t) is not None) else None
            if u is not None and t not in self.index:
                out.append(len(self) + u)
            else:
                out.append(self.index.get(t, self.unk))
        out.append(self.eos)
        return out

    def decode(self, ids: list[int], schema: Schema) -> list[str]:
        """Ids -> tokens, stopping at the end token."""
        out = []
        for i in ids:
            if i == self.eos:
                break
            out.append(self.tokens[i] if i < len(self) else schema.units[i - len(self)])
        return out
