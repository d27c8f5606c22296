"""Reading SParC, CoSQL and Spider files into interactions, and tokenising utterances.

SParC and CoSQL: ``[{database_id, interaction: [{utterance, query, ...}], final}]``.
Spider: ``[{db_id, question, query}]``, each question read as a one-turn interaction.
A data directory holds ``train.json``, ``dev.json``, ``tables.json`` and, optionally,
``database/<db>/<db>.sqlite`` (see data/spider_cosql/README.md).

Readers never stop at the first bad item: each problem becomes a ``DataError`` (one line naming
the file, the interaction and the turn) collected beside the good interactions, so a command can
report them all and carry on.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from nltk.tokenize import TreebankWordTokenizer

from .errors import DataError
from .schema import Schema, load_tables

_TREEBANK = TreebankWordTokenizer()


def tokenize_utterance(text: str) -> list[str]:
    """Words of an utterance. Treebank rules need no nltk data download (word_tokenize does)."""
    words = _TREEBANK.tokenize(text)
    # Treebank turns straight quotes into `` and '', which BERT's vocabulary and users do not use
    return [{"``": '"', "''": '"'}.get(w, w) for w in words]


@dataclass
class Turn:
    utterance: str
    query: str
    words: list[str] = field(default_factory=list)


@dataclass
class Interaction:
    db_id: str
    turns: list[Turn]
    source: str = ""       # the file it came from
    index: int = -1        # its position in that file

    def __len__(self):
        return len(self.turns)


@dataclass
class Split:
    """One file of a data set: the usable interactions and the errors met reading it."""
    path: str
    interactions: list[Interaction]
    errors: list[DataError]
    format: str            # sparc | spider


def read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", file=path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason})", file=path) from None


def detect_format(items) -> str:
    for it in items:
        if isinstance(it, dict):
            if "interaction" in it:
                return "sparc"
            if "question" in it:
                return "spider"
    return "sparc"


def read_split(path: str, schemas: dict[str, Schema] | None = None) -> Split:
    """Read a SParC/CoSQL or Spider file. Unknown databases are errors when ``schemas`` is given."""
    items = read_json(path)
    if not isinstance(items, list):
        raise DataError("expected a JSON list of interactions", file=path)
    fmt = detect_format(items)
    out, errors = [], []
    for i, item in enumerate(items):
        try:
            inter = _read_spider_item(item, path, i) if fmt == "spider" else _read_sparc_item(item, path, i)
            if schemas is not None and inter.db_id not in schemas:
                raise DataError(f"unknown database_id {inter.db_id!r} (not in tables.json)",
                                file=path, interaction=i)
            out.append(inter)
        except DataError as e:
            errors.append(e)
    return Split(path=path, interactions=out, errors=errors, format=fmt)


def _read_sparc_item(item, path, i) -> Interaction:
    if not isinstance(item, dict):
        raise DataError("interaction is not a JSON object", file=path, interaction=i)
    for key in ("database_id", "interaction"):
        if key not in item:
            raise DataError(f"missing key {key!r}", file=path, interaction=i)
    turns_in = item["interaction"]
    if not isinstance(turns_in, list) or not turns_in:
        raise DataError("empty interaction", file=path, interaction=i)
    turns = []
    for t, turn in enumerate(turns_in):
        if not isinstance(turn, dict):
            raise DataError("turn is not a JSON object", file=path, interaction=i, turn=t)
        for key in ("utterance", "query"):
            if key not in turn:
                raise DataError(f"missing key {key!r}", file=path, interaction=i, turn=t)
            if not isinstance(turn[key], str):
                raise DataError(f"{key!r} is not a string", file=path, interaction=i, turn=t)
        if not turn["query"].strip():
            raise DataError("empty query", file=path, interaction=i, turn=t)
        if not turn["utterance"].strip():
            raise DataError("empty utterance", file=path, interaction=i, turn=t)
        turns.append(Turn(turn["utterance"], turn["query"], tokenize_utterance(turn["utterance"])))
    return Interaction(db_id=item["database_id"], turns=turns, source=path, index=i)


def _read_spider_item(item, path, i) -> Interaction:
    if not isinstance(item, dict):
        raise DataError("item is not a JSON object", file=path, interaction=i)
    for key in ("db_id", "question", "query"):
        if key not in item:
            raise DataError(f"missing key {key!r}", file=path, interaction=i)
    for key in ("question", "query"):
        if not isinstance(item[key], str) or not item[key].strip():
            raise DataError(f"empty {key}" if isinstance(item[key], str) else f"{key!r} is not a string",
                            file=path, interaction=i)
    turn = Turn(item["question"], item["query"], tokenize_utterance(item["question"]))
    return Interaction(db_id=item["db_id"], turns=[turn], source=path, index=i)


# ------------------------------------------------------------------------------------------
# data directories
# ------------------------------------------------------------------------------------------
SHIPPED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "data", "spider_cosql", "tiny")


def split_path(data: str, split: str) -> str:
    """``--data`` may be a directory (``<dir>/<split>.json``) or a file."""
    if os.path.isfile(data):
        return data
    return os.path.join(data, f"{split}.json")


def tables_path(data: str, tables: str | None = None) -> str:
    if not os.path.exists(data):
        # said here, where every command first reads --data: the schemas' path derived from a
        # missing folder would name a file beside it instead
        raise DataError("no such data directory or split file", file=data)
    if tables:
        return tables
    d = data if os.path.isdir(data) else os.path.dirname(data)
    return os.path.join(d, "tables.json")


def database_dir(data: str) -> str | None:
    """The ``database/<db>/<db>.sqlite`` root beside a data directory or split file, where it exists."""
    d = os.path.join(data if os.path.isdir(data) else os.path.dirname(data), "database")
    return d if os.path.isdir(d) else None


def database_path(db_dir: str, db_id: str) -> str:
    return os.path.join(db_dir, db_id, f"{db_id}.sqlite")


def load_schemas(data: str, tables: str | None = None) -> dict[str, Schema]:
    return load_tables(tables_path(data, tables))


def db_split(interactions: list[Interaction], n_train_dbs: int = 10):
    """The quick protocol on one file: databases sorted by name, the first ``n`` train, the
    rest validate; no database is on both sides."""
    dbs = sorted({it.db_id for it in interactions})
    if len(dbs) <= n_train_dbs:
        src = interactions[0].source if interactions else None
        raise DataError(f"the database split needs more than {n_train_dbs} databases (the first "
                        f"{n_train_dbs} by name train, the rest validate); this file has {len(dbs)}: "
                        "a smaller --db_split_train, or --protocol official with a train and a dev file",
                        file=src)
    train_dbs = set(dbs[:n_train_dbs])
    train = [it for it in interactions if it.db_id in train_dbs]
    valid = [it for it in interactions if it.db_id not in train_dbs]
    return train, valid
