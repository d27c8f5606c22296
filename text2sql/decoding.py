"""Decoding: grammar-constrained greedy and beam search, and target tokens back to SQL.

The constraint keeps a prefix well-formed, token by token: the query starts with ``select``,
parentheses balance, no clause or set operation follows a token that still wants its operand, a FROM-less query names a
DB unit before it ends, an item of a SELECT, GROUP BY or ORDER BY list never repeats the item right
before it, ``)`` never closes an empty group, a clause (FROM, WHERE, GROUP BY, HAVING,
ORDER BY, LIMIT) comes at most once per SELECT, as the SQL reader requires, JOIN and ON come only in
a FROM clause, and the end token only comes where a query can end (parentheses closed, the last
token a complete operand or a direction). Operators and parentheses go where the reader takes
them: an aggregate (count, sum, avg, min, max) is followed by ``(`` and nothing else; a ``(``
right after ``from`` or ``join`` opens a subquery, so ``select`` follows it; after a complete
operand (a DB unit, ``*``, a value, ``)``, a direction) only what continues or ends one comes
(an operator, a comma, ``)``, a clause, a set operation, a join, a direction, the end), so no
"a.x ( ...", "( * ( * ...", "a.x a.y" or "a.x avg ( ..."; no binary operator (and, or, a
comparison, an arithmetic operator but ``-``, like, glob, between, in, is, as, on) follows a
token that still wants its operand, except ``not in``, ``not like``, ``not between`` and ``not
exists``; ASC and DESC end an ORDER BY item, once; INNER, LEFT, RIGHT, OUTER and CROSS lead to
a JOIN. Each holds on every gold token of SParC's train and dev targets but three annotation
slips (``ORDER BY x DESC 1``, ``GROUP BY x DESC LIMIT 1``) and the repeats below. DB units are
already limited to the turn's own schema by the decoder's unit mask. ``constrained=False`` turns
it off, for comparison.

The search stops at ``max_len`` tokens. Given how many it has left (``left``), the constraint
refuses, once only enough remain to give a wanted operand, close every parenthesis and end,
every token that would want another operand: an undertrained decoder that loops ("avg ( avg (
...") is steered to close its query instead of running off the end unbalanced. A query can
still end up ill-formed in meaning (a column of a table its FROM lacks), which the reader
reports with its reason.
"""
from __future__ import annotations

import torch

from .decoder import NEG, DecoderMemory, mean_distribution
from .errors import DataError
from .schema import Schema
from .sql_tokens import AGGREGATES, CLAUSES, SET_OPS, tokens_to_sql
from .tensors import to_device
from .vocab import Vocab

# tokens after which the query cannot end and ``)`` cannot come
_OPEN = {"select", "from", "join", "on", "as", "where", "group_by", "having", "order_by", "limit",
         "and", "or", "not", "in", "like", "between", "is", "distinct", "(", ",", "=", "!=", "<>", "<",
         ">", "<=", ">=", "+", "-", "/", "%", "||", "intersect", "union", "except", "exists",
         "count", "sum", "avg", "min", "max", "glob", "<go>"}
# operators that take a left operand: never right after an _OPEN token ("-" can be a unary minus)
_BINARY = ("and", "or", "=", "!=", "<>", "<", ">", "<=", ">=", "+", "/", "%", "||", "like", "glob",
           "between", "in", "is", "as", "on")
# what may follow "not" although it is (or reads as) a binary operator: "x not in ( select ..."
_AFTER_NOT = ("in", "like", "between", "exists")
# the words before JOIN the reader takes ("left outer join")
_JOIN_KINDS = ("inner", "left", "right", "outer", "cross")
# what may follow a complete operand (a DB unit, "*", a value, ")", a direction): every keyword
# that follows one in SParC's train and dev targets, the other binary operators, and the join
# kinds that can start a join (OUTER comes only after LEFT or RIGHT)
_AFTER_OPERAND = ("=", "!=", "<>", "<", ">", "<=", ">=", "+", "-", "/", "%", "||", "and", "or", "not",
                  "in", "like", "between", "is", "glob", "as", ",", ")", "from", "join", "on",
                  "inner", "left", "right", "cross", "where", "group_by", "having", "order_by", "limit",
                  "asc", "desc", "intersect", "union", "except")


class Grammar:
    """Allowed next tokens for a prefix of joint ids (keywords, then the schema's units)."""

    def __init__(self, vocab: Vocab, from_less: bool = False):
        self.vocab = vocab
        # FROM-less targets (--remove_from): FROM is rebuilt from the units a query names, so a
        # query that names none ("select count ( * )") cannot be turned into SQL; it may not end
        self.from_less = from_less
        K = len(vocab)
        self.K = K
        self.select = vocab.index["select"]
        self.open_paren = vocab.index["("]
        self.close_paren = vocab.index[")"]
        self.never = [vocab.pad, vocab.go, vocab.unk]
        self.open_ids = {vocab.index[t] for t in _OPEN if t in vocab.index}
        self.order_by = vocab.index.get("order_by")
        self.directions = [vocab.index[t] for t in ("asc", "desc") if t in vocab.index]
        self.table_slots = {vocab.index[t] for t in ("from", "join") if t in vocab.index}
        self.tables = []
        self.clauses = {vocab.index[t] for t in CLAUSES + ("from",) if t != "select" and t in vocab.index}
        self.from_id = vocab.index.get("from")
        # JOIN, ON and the join kinds belong in a FROM clause
        self.from_only = [vocab.index[t] for t in ("join", "on", *_JOIN_KINDS) if t in vocab.index]
        self.set_ops = {vocab.index[t] for t in SET_OPS if t in vocab.index}
        self.clause_or_set_op = sorted(self.clauses | self.set_ops)
        # clauses that hold a comma-separated list (None: the SELECT list, before any other clause)
        self.lists = {None} | {vocab.index[t] for t in ("group_by", "order_by") if t in vocab.index}
        self.comma = vocab.index.get(",")
        self.distinct = vocab.index.get("distinct")
        ids = lambda toks: [vocab.index[t] for t in toks if t in vocab.index]   # noqa: E731
        self.aggregates = set(ids(AGGREGATES))
        self.binary = ids(_BINARY)
        self.not_id = vocab.index.get("not")
        self.binary_after_not = [t for t in self.binary if t not in set(ids(_AFTER_NOT))]
        self.after_operand = torch.zeros(K, dtype=torch.bool)
        self.after_operand[ids(_AFTER_OPERAND) + [vocab.eos]] = True
        self.join_kinds = set(ids(_JOIN_KINDS))
        self.open_list = sorted(self.open_ids | self.join_kinds)    # what the length budget refuses
        # what follows each join kind: JOIN, and OUTER after LEFT or RIGHT, so it cannot loop
        self.join_after = {vocab.index[k]: ids(("join", "outer") if k in ("left", "right") else ("join",))
                           for k in _JOIN_KINDS if k in vocab.index}

    @property
    def tables(self) -> list[list[int] | None]:
        """Per row being decoded: the unit indices that are tables (None: no FROM rules)."""
        return self._tables

    @tables.setter
    def tables(self, rows: list[list[int] | None]):
        self._tables = rows
        # as joint ids, once per batch rather than at every step of every row
        self._table_ids = [None if t is None else torch.tensor([self.K + j for j in t], dtype=torch.long)
                           for t in rows]

    def allowed(self, prefix: list[int], size: int, row: int = 0, left: int | None = None) -> torch.Tensor:
        """Bool mask [size] over the joint space for the next token after ``prefix``; ``left``:
        how many tokens the search may still write, the end token included (None: no limit).

        With the row's table units known: a table comes exactly after ``from``/``join`` (or a
        subquery's ``(``), and nothing else does."""
        last = prefix[-1] if prefix else None
        forced = (self.join_after[last] if last in self.join_kinds          # "left outer join"
                  else self.open_paren if last in self.aggregates           # "count (": nothing else
                  # "from ( select ...": a subquery
                  else self.select if last == self.open_paren and len(prefix) > 1 and prefix[-2] in self.table_slots
                  else None)
        if forced is not None:
            only = torch.zeros(size, dtype=torch.bool)
            only[forced] = True
            return only
        ok = torch.ones(size, dtype=torch.bool)
        table_ids = self._table_ids[row] if row < len(self._table_ids) else None
        if table_ids is not None and prefix:
            if prefix[-1] in self.table_slots:
                ok[:] = False
                ok[table_ids] = True
                ok[self.open_paren] = True
            else:
                ok[table_ids] = False
        ok[self.never] = False
        if not prefix:
            ok[:] = False
            ok[self.select] = True
            return ok
        depth, used, clause, names_unit, repeat = self.scan(prefix)
        in_from = clause == self.from_id
        last_open = last < self.K and last in self.open_ids
        if not last_open:
            # after a complete operand only what continues or ends one: an operator, a comma, a
            # ")", a clause, a set operation, a join, a direction, the end. Not "(" or anything
            # that starts another operand: "a.x ( ...", "( * ( * ...", "a.x avg ( ...", "a.x a.y"
            # (a list without its comma), nor a keyword out of place ("a.x right glob case ...")
            ok[:self.K] &= self.after_operand
            ok[self.K:] = False
        else:
            # a binary operator right after a token that still wants its operand ("select avg and",
            # "where = ..."); gold has only "not in" and "not like" of this shape
            ok[self.binary_after_not if last == self.not_id else self.binary] = False
        if depth <= 0 or last_open:
            ok[self.close_paren] = False
        if depth != 0 or last_open:
            ok[self.vocab.eos] = False
        if self.from_less and not names_unit:
            ok[self.vocab.eos] = False
        if last_open:
            # a clause or set operation right after an operator, a comma or a keyword that wants an
            # operand would leave it without one: "select group_by ..." (an empty SELECT list)
            ok[self.clause_or_set_op] = False
        if used:
            ok[list(used)] = False
        if repeat is not None:
            # a list item may not end as a copy of the item before it: "select a.x , a.x" is how a
            # decoder repeats itself (62 of one run's 1,203 dev queries, all wrong). SParC's gold
            # does it in 17 of 9,025 training queries (annotation slips) and, in dev, once: a
            # self-join, whose two copies of a table alias-less tokens cannot tell apart anyway
            ok[repeat] = False
        if not in_from:
            ok[self.from_only] = False
        if clause != self.order_by or last in self.directions:
            # ASC / DESC end an ORDER BY item, once: not in another clause ("from ( ... ) desc"),
            # not twice ("desc desc ...")
            ok[self.directions] = False
        # SELECT starts a query: only first, after "(" (a subquery) or after a set operation
        if last != self.open_paren and last not in self.set_ops:
            ok[self.select] = False
        if left is not None and left <= depth + last_open + 2:
            # the search stops at max_len: with just enough steps left to give the operand a
            # token wants, close every parenthesis and end, nothing that wants another operand
            # may come (a looping, undertrained decoder otherwise runs off the end unbalanced)
            closing = ok.clone()
            closing[self.open_list] = False
            if closing.any():
                ok = closing
        return ok

    def scan(self, prefix: list[int]) -> tuple[int, set[int], int | None, bool, int | None]:
        """One pass over the prefix -> (parenthesis depth, the clause keywords the SELECT being
        written already has (each may come once; FROM counts as one), the clause it is in (FROM:
        where JOIN and ON belong; ORDER BY: where ASC and DESC do; None in the SELECT list or
        inside a plain parenthesis), whether the prefix names any DB unit, the one token that
        would make the list item being written (SELECT, GROUP BY or ORDER BY) a copy of the item
        before it, or None).

        A stack with one entry per open ``(``: a block [clauses, last clause, previous item, current
        item] where it opened a subquery (``( select``), None for any other parenthesis; the bottom
        entry is the outer query. A set operation starts a new SELECT at its level. Tokens inside a
        plain parenthesis (``count ( a.x )``) belong to the nearest block's current item; a subquery
        inside an item makes it unlike any other (a unique negative marker)."""
        stack: list[list | None] = [self._block()]
        after_open = False
        depth = 0
        names_unit = False
        for pos, t in enumerate(prefix):
            names_unit = names_unit or t >= self.K
            top = stack[-1]
            block = next(b for b in reversed(stack) if b is not None)
            if t == self.select and after_open:
                stack[-1] = self._block()
                outer = next(b for b in reversed(stack[:-1]) if b is not None)
                if outer[3] is not None:
                    outer[3].append(-1 - pos)
                after_open = False
                continue
            if t == self.open_paren:
                depth += 1
                stack.append(None)
            elif t == self.close_paren:
                depth -= 1
                if len(stack) > 1:
                    stack.pop()
                block = next(b for b in reversed(stack) if b is not None)
            elif top is not None and t in self.set_ops:
                stack[-1] = self._block()
                after_open = False
                continue
            elif top is not None and t in self.clauses:
                top[0].add(t)
                top[1] = t
                top[2], top[3] = None, ([] if t in self.lists else None)
                after_open = False
                continue
            elif top is not None and t == self.comma and top[3] is not None:
                top[2], top[3] = top[3], []
                after_open = False
                continue
            if block[3] is not None and t != self.select:
                if not (t == self.distinct and not block[3]):     # "select distinct a.x": the item is a.x
                    block[3].append(t)
            after_open = t == self.open_paren
        top = stack[-1]
        block = next(b for b in reversed(stack) if b is not None)
        prev, cur = block[2], block[3]
        repeat = prev[-1] if prev and cur is not None and prev[-1] >= 0 and prev[:-1] == cur else None
        if top is None:                 # inside a plain parenthesis: no clause starts here
            return depth, set(self.clauses), None, names_unit, repeat
        return depth, top[0], top[1], names_unit, repeat

    @staticmethod
    def _block() -> list:
        return [set(), None, None, []]


def _apply(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logp.masked_fill(~mask.to(logp.device), NEG)


def _no_tables(decoder, mem: DecoderMemory) -> torch.Tensor | None:
    """--query_tables' marks before the first token: no table used yet ([B, U] zeros)."""
    if decoder.query_table is None:
        return None
    return mem.units.new_zeros(mem.units.shape[:2])


class _Stepper:
    """One decoder stepping over its memory, for rows that each belong to one of B turns (beam
    slots repeat their turn). ``carry`` holds the rows' memory, LSTM state, last fused output and
    --query_tables marks."""

    def __init__(self, decoder, turn_state: torch.Tensor, mem: DecoderMemory):
        self.decoder, self.turn_state, self.mem = decoder, turn_state, decoder.prepare(mem)
        self.turns, self.device = turn_state.shape[0], turn_state.device

    def start(self, owner: torch.Tensor) -> dict:
        d = self.decoder
        mem = self.mem.select(owner)
        h, c = d.init_state(self.turn_state)
        return {"mem": mem, "state": (h[owner], c[owner]), "out": h.new_zeros(len(owner), d.hidden),
                "flags": _no_tables(d, mem)}

    def step(self, carry: dict, tok: torch.Tensor):
        """Input tokens [n] -> (carry after the step, log-probs [n, V])."""
        d, mem = self.decoder, carry["mem"]
        emb = d.embed(tok.unsqueeze(1), mem.units)[:, 0]
        state, out, logp = d.step(carry["state"], emb, carry["out"], mem, carry["flags"])
        return {**carry, "state": state, "out": out}, logp

    def choose(self, carry: dict, idx: torch.Tensor | None, tok: torch.Tensor) -> dict:
        """The rows ``idx`` (None: all, in order) continue with tokens ``tok`` [n]."""
        h, c = carry["state"]
        out, flags = carry["out"], carry["flags"]
        if idx is not None:
            h, c, out = h[idx], c[idx], out[idx]
            flags = None if flags is None else flags[idx]
        if flags is not None:
            flags = self.decoder.add_query_tables(flags, tok, carry["mem"].unit_tables)
        return {**carry, "state": (h, c), "out": out, "flags": flags}


class _Ensemble:
    """Several decoders (models trained alike, on one vocabulary) stepping together; each step's
    distribution is the mean of theirs (log of the mean probability)."""

    def __init__(self, steppers: list[_Stepper]):
        self.steppers = steppers
        self.turns, self.device = steppers[0].turns, steppers[0].device

    def start(self, owner):
        return [s.start(owner) for s in self.steppers]

    def step(self, carry, tok):
        stepped = [s.step(c, tok) for s, c in zip(self.steppers, carry)]
        return [c for c, _ in stepped], mean_distribution([lp for _, lp in stepped])   # [n, V]

    def choose(self, carry, idx, tok):
        return [s.choose(c, idx, tok) for s, c in zip(self.steppers, carry)]


def _stepper(decoder, turn_state, mem):
    """A decoder, turn states and memory -> one stepper; lists of each (an ensemble) -> their mean."""
    if isinstance(decoder, (list, tuple)):
        if len(decoder) == 1:
            return _Stepper(decoder[0], turn_state[0], mem[0])
        return _Ensemble([_Stepper(d, t, m) for d, t, m in zip(decoder, turn_state, mem)])
    return _Stepper(decoder, turn_state, mem)


@torch.no_grad()
def greedy(decoder, turn_state, mem: DecoderMemory, vocab: Vocab, grammar: Grammar | None,
           max_len: int = 100) -> list[list[int]]:
    """Greedy decoding of B turns at once -> joint ids per turn, without the end token.
    ``decoder``, ``turn_state`` [B, S] and ``mem`` may be lists of one per model (an ensemble)."""
    search = _stepper(decoder, turn_state, mem)
    B, dev = search.turns, search.device
    carry = search.start(torch.arange(B, device=dev))
    tok = torch.full((B,), vocab.go, dtype=torch.long, device=dev)
    seqs: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for _ in range(max_len):
        carry, logp = search.step(carry, tok)
        if grammar is not None:
            logp = _apply(logp, torch.stack([grammar.allowed(s, logp.shape[1], b, max_len - len(s))
                                             for b, s in enumerate(seqs)]))
        nxt = logp.argmax(-1).tolist()
        for b in range(B):
            if not done[b]:
                if nxt[b] == vocab.eos:
                    done[b] = True
                else:
                    seqs[b].append(nxt[b])
        if all(done):
            break
        tok = torch.tensor(nxt, device=dev)
        carry = search.choose(carry, None, tok)
    return seqs


def length_norm(n: int, alpha: float) -> float:
    """GNMT's length penalty ((5 + n) / 6) ** alpha for a hypothesis of n tokens (end included)."""
    return ((5.0 + n) / 6.0) ** alpha


@torch.no_grad()
def beam_candidates(decoder, turn_state, mem: DecoderMemory, vocab: Vocab, grammar: Grammar | None,
                    beam: int = 4, max_len: int = 100,
                    length_penalty: float = 0.0) -> list[list[tuple[float, list[int]]]]:
    """Beam search for B turns at once (turn_state [B, S], a memory of B turns) -> per turn, the
    queries it finished as (score, joint ids without the end token), best first (a turn that
    finished none: its best live hypothesis, scored -inf). ``decoder``, ``turn_state`` and ``mem``
    may be lists of one per model (an ensemble).

    All B * beam hypotheses go through each decoder step together, slot ``b * beam + k`` holding
    hypothesis k of turn b (an empty slot scores -inf). Per turn, hypotheses are ranked by their
    summed log-probability; a finished one leaves the beam, and a turn's search stops once no live
    hypothesis can beat its best finished one.

    A sum of log-probabilities favours short queries for having fewer factors: a follow-up that
    adds ``and <column> = value`` pays four more. With ``length_penalty`` alpha > 0, finished
    hypotheses are ranked by that sum divided by ``length_norm(n, alpha)`` (GNMT's), and a turn
    stops once its best finished one beats the best live one scored as if it ended at the next
    token. alpha = 0 is the plain search.
    """
    search = _stepper(decoder, turn_state, mem)
    B, dev = search.turns, search.device
    n = B * beam
    owner = torch.arange(B, device=dev).repeat_interleave(beam)             # [n] slot -> turn
    carry = search.start(owner)
    seqs: list[list[list[int]]] = [[[]] for _ in range(B)]                 # live hypotheses per turn
    scores = torch.full((B, beam), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    tok = torch.full((n,), vocab.go, dtype=torch.long, device=dev)
    for _ in range(max_len):
        carry, logp = search.step(carry, tok)                              # logp [n, V]
        V = logp.shape[1]
        if grammar is not None:
            free = torch.ones(V, dtype=torch.bool)
            masks = [grammar.allowed(seqs[b][k], V, b, max_len - len(seqs[b][k]))
                     if not done[b] and k < len(seqs[b]) else free
                     for b in range(B) for k in range(beam)]
            logp = _apply(logp, torch.stack(masks))
        total = (scores.unsqueeze(-1) + logp.view(B, beam, V)).view(B, beam * V)
        top = total.topk(min(2 * beam, beam * V), dim=-1)
        values, indices = top.values.tolist(), top.indices.tolist()         # the step's one read-back
        src, toks = list(range(n)), [vocab.go] * n
        new_scores = [[float("-inf")] * beam for _ in range(B)]
        for b in range(B):
            if done[b]:
                continue
            kept = []
            for score, idx in zip(values[b], indices[b]):
                if score <= NEG / 2:
                    break
                r, t = divmod(idx, V)
                if t == vocab.eos:
                    finished[b].append((score / length_norm(len(seqs[b][r]) + 1, length_penalty), seqs[b][r]))
                    continue
                src[b * beam + len(kept)], toks[b * beam + len(kept)] = b * beam + r, t
                new_scores[b][len(kept)] = score
                kept.append(seqs[b][r] + [t])
                if len(kept) == beam:
                    break
            best_done = max((s for s, _ in finished[b]), default=None)
            # the best live hypothesis as if it ended at the next token for free (with alpha = 0 a
            # bound: a raw score only falls; with alpha > 0 GNMT's and Hugging Face's heuristic)
            best_live = new_scores[b][0] / length_norm(len(kept[0]) + 1, length_penalty) if kept else None
            if not kept or (best_done is not None and best_done >= best_live):
                done[b] = True
                new_scores[b] = [float("-inf")] * beam
            else:
                seqs[b] = kept
        if all(done):
            break
        idx = to_device(src, torch.long, dev)
        scores = to_device(new_scores, scores.dtype, dev)
        tok = to_device(toks, torch.long, dev)
        carry = search.choose(carry, idx, tok)
    # a stable sort: among equal scores the first finished leads, as max() picked it
    return [sorted(f, key=lambda x: -x[0]) if f else [(float("-inf"), s[0] if s else [])]
            for f, s in zip(finished, seqs)]


def ids_to_sql(ids: list[int], vocab: Vocab, schema: Schema) -> tuple[str, list[str], str | None]:
    """Joint ids -> (SQL, tokens, problem). FROM is restored for FROM-less output; a token
    sequence that does not make a query comes back as its tokens joined, with the reason."""
    tokens = vocab.decode(list(ids) + [vocab.eos], schema)
    try:
        return tokens_to_sql(tokens, schema), tokens, None
    except DataError as e:
        return " ".join(tokens), tokens, e.reason
    except (ValueError, KeyError, IndexError, TypeError) as e:
        # model output can be any token sequence: never let a malformed one stop an evaluation
        return " ".join(tokens), tokens, f"cannot build SQL: {e}"
