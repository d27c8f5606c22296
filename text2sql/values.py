"""Literal values for a decoded query's placeholders, taken from the conversation.

A run trained with placeholder values (the default, as in EditSQL; the official exact-set-match
metric ignores values) writes ``"value"`` where a gold query has a literal: ``WHERE species =
"value"``. That is enough to score, not to run on a database. :class:`ValueFiller` puts literals in
the slots, from what the user wrote:

* **numbers** (digits, number words up to twenty, "once", "twice") fill slots compared with a number column or an
  aggregate, or by ``<``, ``>``, ``BETWEEN``; a number the query already spells (``LIMIT 3``) is not
  used twice;
* **text** slots take a span of the question that equals a cell of the compared column, matched
  case-insensitively and with a plural ``s`` dropped ("the lions" -> ``'lion'``), written as the
  database writes it, when the database is at hand; otherwise a quoted span, otherwise a run of
  capitalised words that does not open the sentence ("flights from Aberdeen"); ``LIKE`` slots take a
  span that occurs inside a cell (or a quoted span), as ``'%span%'``;
* in a follow-up, a slot whose column and operator the previous query also had keeps that query's
  literal unless the new question offers another ("How many are there?" keeps its restrictions;
  "What about China?" replaces one); slots the current question leaves empty then look back through
  the earlier questions, newest first.

A slot nothing fits keeps its placeholder: an honest ``'value'`` beats a guessed literal.
"""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from .schema import Schema, connect_readonly
from .sql_tokens import _NUM, AGGREGATES, VALUE, sql_ident

_NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())} | {"once": "1", "twice": "2", "thrice": "3"}
_QUOTED = re.compile(r"\"([^\"]+)\"|(?<![A-Za-z])'([^']+)'(?![A-Za-z])|“([^”]+)”|‘([^’]+)’")
_WORD = re.compile(r"[^\W_]+(?:['&.-][^\W_]+)*")
_DATE = re.compile(r"(?<![\w-])\d{4}-\d{1,2}-\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?(?![\w-])")
# LIKE patterns the question spells out: "starts with W" -> 'W%'
_LIKE_CUES = [(re.compile(r"\b(?:start|starts|starting|begin|begins|beginning)\s+with\s+(?:the\s+)?(?:letter\s+|word\s+)?"
                          r"[\"'“‘]?([^\s\"'”’?.,!]+)", re.I), "{}%"),
              (re.compile(r"\b(?:end|ends|ending)\s+(?:with|in)\s+(?:the\s+)?(?:letter\s+|word\s+)?"
                          r"[\"'“‘]?([^\s\"'”’?.,!]+)", re.I), "%{}"),
              (re.compile(r"\b(?:contain|contains|containing|include|includes|including)\s+(?:the\s+)?"
                          r"(?:letter\s+|word\s+|substring\s+|string\s+)?[\"'“‘]?([^\s\"'”’?.,!]+)", re.I), "%{}%")]
_NUMERIC_OPS = {"<", ">", "<=", ">=", "between"}
_NUMERIC_AGGREGATES = {"count", "sum", "avg"}
# capitalised words that are not values, whatever their case in the question
_NOT_NAMES = {"i", "what", "which", "who", "whom", "whose", "where", "when", "how", "why", "show",
              "list", "find", "give", "tell", "return", "and", "or", "of", "the", "a", "an", "for",
              "in", "on", "at", "by", "to", "from", "with", "please", "also", "only", "now", "then",
              "same", "those", "these", "that", "this", "them", "it", "its", "their", "all", "any"}
# nor are these, when a LIKE slot looks for a word inside a cell
_FUNCTION_WORDS = {"are", "is", "was", "were", "be", "been", "have", "has", "had", "do", "does", "did",
                   "not", "no", "yes", "there", "many", "much", "more", "most", "less", "than", "each",
                   "every", "other", "ones", "one", "name", "names", "show", "those", "they", "out"}
_MAX_NGRAM = 6
_MAX_CELLS = 20000        # distinct cells read per column; a bigger column matches on these only


@dataclass
class Slot:
    """One placeholder of a token sequence and what it is compared with."""
    index: int                 # position in the tokens
    unit: str | None           # the compared column's unit ("animal.species"), if the tokens name one
    op: str                    # "=", "<", "like", "between", "in", ...
    aggregate: str | None      # count / sum / avg / min / max around the column, if any
    numeric: bool

    @property
    def key(self) -> tuple:
        return self.unit, self.op, self.aggregate


def find_slots(tokens: list[str], schema: Schema) -> list[Slot]:
    """The ``value`` placeholders of a target token sequence, each with its column and operator."""
    out = []
    for i, tok in enumerate(tokens):
        if tok != VALUE:
            continue
        j = i - 1
        op = tokens[j] if j >= 0 else ""
        # x BETWEEN value AND value: the second value shares the first's column
        if op == "and" and j >= 2 and tokens[j - 1] == VALUE and tokens[j - 2] == "between":
            j, op = j - 2, "between"
        k = j - 1
        if k >= 0 and tokens[k] == "not":           # NOT LIKE, NOT IN
            k -= 1
        unit, aggregate = None, None
        if k >= 0 and tokens[k] == ")":
            depth, m = 0, k
            while m >= 0:
                depth += tokens[m] == ")"
                depth -= tokens[m] == "("
                if depth == 0:
                    break
                m -= 1
            inner = [t for t in tokens[m + 1:k] if schema.unit_index(t) is not None]
            unit = inner[0] if inner else None
            aggregate = tokens[m - 1] if m >= 1 and tokens[m - 1] in AGGREGATES else None
        elif k >= 0 and schema.unit_index(tokens[k]) is not None:
            unit = tokens[k]
        column = _column(schema, unit)
        column_type = column.type if column is not None else None
        numeric = (aggregate in _NUMERIC_AGGREGATES or column_type == "number"
                   or (op in _NUMERIC_OPS and column_type not in ("time", "text"))) and op != "like"
        out.append(Slot(i, unit, op, aggregate, numeric))
    return out


def _column(schema: Schema, unit: str | None):
    if unit is None:
        return None
    ui = schema.unit_index(unit)
    ci = schema.unit_column[ui] if ui is not None else -1
    return schema.columns[ci] if ci >= 0 else None


def numbers_in(question: str) -> list[str]:
    """Numbers the question writes, in order: digits as written (``1,000`` -> ``1000``), number
    words up to twenty, and once / twice / thrice."""
    dates = [m.span() for m in _DATE.finditer(question)]
    found = [(m.start(), m.group().replace(",", "")) for m in _NUMBER.finditer(question)
             if not any(a <= m.start() < b for a, b in dates)]
    for m in re.finditer(r"[A-Za-z]+", question):      # "three-year old" too
        if m.group().lower() in _NUMBER_WORDS:
            found.append((m.start(), _NUMBER_WORDS[m.group().lower()]))
    return [n for _, n in sorted(found)]


def quoted_in(question: str) -> list[str]:
    """Quoted spans, without the sentence's punctuation a writer put inside ("Kyle." -> Kyle)."""
    spans = (next(g for g in m.groups() if g).strip() for m in _QUOTED.finditer(question))
    return [t.rstrip(".?!,;:") or t for t in spans if t]


def capitalised_in(question: str) -> list[str]:
    """Runs of capitalised words (names: "Aberdeen", "United Airlines", "APG") that do not open the
    question, unless written all in capitals."""
    words = [(m.start(), m.group()) for m in _WORD.finditer(question)]
    runs, cur = [], []
    for n, (_, w) in enumerate(words):
        name = w[:1].isupper() and w.lower() not in _NOT_NAMES and (n > 0 or (w.isupper() and len(w) > 1))
        if name:
            cur.append(w)
        elif cur:
            runs.append(" ".join(cur))
            cur = []
    if cur:
        runs.append(" ".join(cur))
    return runs


def _norm(text: str) -> str:
    return " ".join(m.group().lower() for m in _WORD.finditer(text))


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def literal(text: str) -> str:
    """Text as a SQL literal, in single quotes (standard SQL; SQLite reads a double-quoted word that
    is also a column name as the column). Numbers go in bare, as the question wrote them."""
    return "'" + text.replace("'", "''") + "'"


def _unquote(lit: str) -> str:
    if len(lit) >= 2 and lit[0] == lit[-1] and lit[0] in "'\"":
        return lit[1:-1].replace(lit[0] * 2, lit[0])
    return lit


class ValueFiller:
    """Fills the placeholders of one schema's decoded queries; reads the database (read-only)
    for cell values when it has one, and keeps what it read per column."""

    def __init__(self, schema: Schema, db_path: str | None = None):
        self.schema, self.db_path = schema, db_path
        self._cells: dict[str, dict[str, str]] = {}
        names = [t.natural for t in schema.tables] + [c.natural for c in schema.columns]
        self._schema_words = {_singular(w) for n in names for w in _norm(n).split()}

    def _names_schema(self, text: str) -> bool:
        """Whether every word of ``text`` is a word of the schema's names ("TV Channel", "GNP"):
        a capitalised column name, not a value."""
        return all(_singular(w) in self._schema_words for w in _norm(text).split())

    def cells(self, unit: str | None) -> dict[str, str]:
        """Normalised cell text -> the cell as stored, for a text column (empty without a database)."""
        col = _column(self.schema, unit)
        if col is None or self.db_path is None:
            return {}
        if unit not in self._cells:
            table = self.schema.tables[col.table].name
            sql = (f"SELECT DISTINCT {sql_ident(col.name)} FROM {sql_ident(table)} "
                   f"WHERE {sql_ident(col.name)} IS NOT NULL LIMIT {_MAX_CELLS}")
            found: dict[str, str] = {}
            try:
                con = connect_readonly(self.db_path)
                try:
                    for (v,) in con.execute(sql):
                        if isinstance(v, str) and v.strip():
                            found.setdefault(_norm(v), v)
                finally:
                    con.close()
            except sqlite3.Error:
                found = {}
            self._cells[unit] = found
        return self._cells[unit]

    def candidates(self, slot: Slot, question: str, weak: bool = True) -> list[str]:
        """Literals ``question`` offers for ``slot``, best first (SQL text, quoted where text).
        ``weak=False`` leaves out the guesses that should not replace an earlier query's literal:
        a number for a text column, a word found inside a cell for ``LIKE``."""
        if slot.numeric:
            return numbers_in(question)
        cells = self.cells(slot.unit)
        if slot.op == "like":
            spelled = [pattern.format(m.group(1)) for cue, pattern in _LIKE_CUES for m in cue.finditer(question)]
            texts = spelled or [f"%{t}%" for t in quoted_in(question)]
            if not texts and weak and cells:
                texts = [f"%{t}%" for t in self._cell_spans(cells, question, inside=True)]
            return [literal(t) for t in texts]
        col = _column(self.schema, slot.unit)
        dates = [literal(m.group()) for m in _DATE.finditer(question)]
        if (col is not None and col.type == "time") or slot.op in _NUMERIC_OPS:
            return dates + numbers_in(question)
        found = self._cell_spans(cells, question, inside=False) if cells else []
        texts = found or quoted_in(question) or [t for t in capitalised_in(question) if not self._names_schema(t)]
        # a text column that holds numbers (Spider's types are not always right)
        return dates + [literal(t) for t in texts] + ([literal(n) for n in numbers_in(question)] if weak else [])

    def _cell_spans(self, cells: dict[str, str], question: str, inside: bool) -> list[str]:
        """Spans of the question equal to a cell (``inside``: occurring in a cell), longest first
        where they overlap, then in the question's order; each given as the database writes it
        (``inside``: as the question writes it)."""
        words = [m.group().lower() for m in _WORD.finditer(question)]
        hits = []      # (start, end, value)
        for n in range(min(_MAX_NGRAM, len(words)), 0, -1):
            for s in range(len(words) - n + 1):
                if any(a < s + n and s < b for a, b, _ in hits):
                    continue
                span = words[s:s + n]
                if inside:
                    text = " ".join(span)
                    if n == 1 and (text in _NOT_NAMES or text in _FUNCTION_WORDS or len(text) < 3):
                        continue
                    if any(text in c for c in cells):
                        hits.append((s, s + n, text))
                    continue
                for form in (" ".join(span), " ".join(span[:-1] + [_singular(span[-1])])):
                    if form in cells and not (n == 1 and form in _NOT_NAMES):
                        hits.append((s, s + n, cells[form]))
                        break
        return [v for _, _, v in sorted(hits)]

    def fill(self, tokens: list[str], questions: list[str], previous: list[str] | None = None) -> list[str]:
        """``tokens`` with its placeholders filled. ``questions``: the conversation so far, the
        current question last; ``previous``: the previous turn's filled tokens, if any."""
        slots = find_slots(tokens, self.schema)
        if not slots or not questions:
            return list(tokens)
        out = list(tokens)
        # numbers the query already spells (LIMIT 3) are not values to place again
        used = {t for t in tokens if _is_literal(t)}
        offered = {s.index: self.candidates(s, questions[-1]) for s in slots}

        def take(slot, pool) -> bool:
            for c in pool:
                if c not in used:
                    used.add(c)
                    out[slot.index] = c
                    return True
            return False

        # slots of a column and operator the previous query also had: with more of them than it
        # had ("... or in desert habitats"), the first ones keep its literals and the rest are
        # new; with as many or fewer, each takes what the question offers, else the old literal
        inherited = self._previous_literals(previous)
        groups: dict[tuple, list[Slot]] = {}
        for s in slots:
            groups.setdefault(s.key, []).append(s)
        fixed, replaceable, fresh = [], [], []
        for key, group in groups.items():
            old = inherited.get(key, [])
            if len(group) > len(old):
                fixed += zip(group[:len(old)], old)
                fresh += group[len(old):]
            else:
                replaceable += zip(group, old)
        for s, lit in fixed:
            out[s.index] = lit
            used.add(lit)
        for s in sorted(fresh, key=lambda s: s.index):
            take(s, offered[s.index])
        for s, lit in replaceable:
            strong = self.candidates(s, questions[-1], weak=False)
            if not take(s, [c for c in offered[s.index] if c in strong]):
                out[s.index] = lit
                used.add(lit)
        for s in slots:
            if out[s.index] != VALUE:
                continue
            for q in reversed(questions[:-1]):
                if take(s, self.candidates(s, q, weak=False)):
                    break
        return out

    def _previous_literals(self, previous: list[str] | None) -> dict[tuple, list[str]]:
        if not previous:
            return {}
        probe = [VALUE if _is_literal(t) and not _is_limit(previous, i) else t for i, t in enumerate(previous)]
        found: dict[tuple, list[str]] = {}
        for s in find_slots(probe, self.schema):
            if previous[s.index] != VALUE:
                found.setdefault(s.key, []).append(previous[s.index])
        return found


def _is_literal(tok: str) -> bool:
    """A literal target token, as ``sql_tokens.tokens_to_query`` reads one: a number or a quoted string."""
    return bool(_NUM.match(tok)) or (len(tok) >= 2 and tok[0] == tok[-1] and tok[0] in "'\"")


def _is_limit(tokens: list[str], i: int) -> bool:
    return i > 0 and tokens[i - 1] == "limit"


def value_of(lit: str) -> str:
    """A literal's value, for comparing a filled query's literals with a gold query's."""
    return _unquote(lit).lower()
