"""The whole parser in one place: BERT encoder -> utterance-DB attention -> turn RNN -> decoder.

    turn t of an interaction (plus a DB-only pre-turn before turn 1)
      encoder    [CLS] utterance [SEP] unit [SEP] ...     -> tokens [W, H], units [U, H]
      features   units += name-match features (+ --unit_types: kind and key role)
      (joint)    --joint_layers: self-attention over [tokens; units] together
      attention  tokens <-> units, residual               -> tokens', units'
      turn RNN   summary(tokens', units') per turn        -> history h_{t-1}, state s_t
      (BiLSTM)   --utterance_rnn: over tokens' + W h_{t-1}, residual
      decoder    init from s_t; attends over tokens' + W h_{t-1} (--previous_utterances: and the
                 earlier turns' ones), units' (--previous_tables: those of the previous SQL's tables
                 marked), previous SQL -> log_softmax over [keywords; units]

The bracketed layers are EditSQL's (its utterance BiLSTM and its "maximum_utterances") and
RAT-SQL's (a Transformer over question and schema, without relations): off by default, they are
what can learn on top of a frozen encoder, as are the optional unit features.

Every turn of every interaction in a batch goes through the encoder in a few length-sorted calls,
through the turn RNN in one pass batched over interactions, and through the decoder together
(teacher forcing needs only the gold previous query). ``forward_unbatched`` computes the same
thing EditSQL's way, one interaction and one turn at a time. Nothing is detached: the loss of
turn 3 reaches turn 1's encoding.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from .attention import JointLayer, UtteranceDBAttention
from .decoder import (NEG, Decoder, DecoderMemory, PreviousQueryEncoder, UtteranceRNN, same_table,
                      unit_table_ids)
from .encoder import ScalarMix, SchemaEncoder
from .encoder_cache import entry_key
from .schema import UNIT_KINDS
from .tensors import to_device
from .turn_rnn import TurnRNN, TurnSummary
from .vocab import Vocab

# parameter groups for per-module gradient norms and the two learning rates
MODULES = ("encoder", "attention", "turn_rnn", "decoder", "output")


def module_of(param_name: str) -> str:
    head = param_name.split(".")[0]
    if head == "encoder":
        return "encoder"
    if head == "attention":
        return "attention"
    if head in ("layer_mix", "link", "unit_type", "utt_rnn", "joint"):      # trainable layers over the encoder's outputs
        return "attention"
    if head in ("summary", "turn_rnn", "history"):
        return "turn_rnn"
    if head == "decoder" and param_name.split(".")[1] in ("keyword_out", "db_proj", "copy_proj", "keyword_emb"):
        return "output"
    if head in ("relevance", "prev_table"):
        return "output"
    return "decoder"


def _stem(w: str) -> str:
    w = w.lower()
    for suffix in ("ies", "es", "s"):
        if w.endswith(suffix) and len(w) > len(suffix) + 2:
            return w[:-len(suffix)] + ("y" if suffix == "ies" else "")
    return w


def _singular(w: str) -> str:
    """A plural's singular, for --link_bonus. ``_stem`` above (the encoder-side features that every
    saved run was trained with, so it stays) maps "names" to "nam" and "address" to "addres", so
    "the names of ..." never matched a "name" column there."""
    w = w.lower()
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "shes", "ches", "xes", "zes")):
        return w[:-2]
    if w.endswith("s") and len(w) > 3 and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _name_words(text: str, norm) -> tuple[list[str], list[str]]:
    """A unit's text ("table . column", "table *" or "table") -> the normalised words of its
    column's name (none for a table or its star) and of its table's name."""
    table, _, column = text.partition(" . ")
    return [norm(t) for t in column.split()], [norm(t) for t in table.replace(" *", "").split()]


def _memo(cache: dict, key, compute):
    """cache[key], computed on a miss; the cache is emptied when it passes 100,000 entries."""
    hit = cache.get(key)
    if hit is None:
        if len(cache) > 100000:
            cache.clear()
        hit = cache[key] = compute()
    return hit


_LINK_CACHE: dict = {}


def _link(words: list[str], unit_texts: list[str], U: int) -> torch.Tensor:
    """[U, 2] link features of one turn (rows past ``len(unit_texts)`` are padding)."""
    def compute():
        said = {_stem(w) for w in words}
        feats = torch.zeros(len(unit_texts), 2)
        for j, text in enumerate(unit_texts):
            column, table = _name_words(text, _stem)
            for k, toks in enumerate((table, column)):
                if toks:
                    feats[j, k] = sum(t in said for t in toks) / len(toks)
        return feats
    feats = _memo(_LINK_CACHE, (tuple(words), tuple(unit_texts)), compute)
    return torch.nn.functional.pad(feats, (0, 0, 0, U - feats.shape[0]))


N_POINTER_LINKS = 6
_POINTER_CACHE: dict = {}


def _phrase_in(toks: list[str], said: list[str]) -> bool:
    n = len(toks)
    return n > 0 and any(said[i:i + n] == toks for i in range(len(said) - n + 1))


def _pointer_links(words: list[str], prev_words: list[str], unit_texts: list[str], U: int) -> torch.Tensor:
    """[U, N_POINTER_LINKS] what --link_bonus scores a unit by, for one turn: the share of its
    column's and its table's name words in this turn's words, whether each name occurs there as a
    whole phrase, and the two shares in the turn before's words (rows past ``len(unit_texts)``
    are padding)."""
    def compute():
        now = [_singular(w) for w in words]
        now_set, before = set(now), {_singular(w) for w in prev_words}
        feats = torch.zeros(len(unit_texts), N_POINTER_LINKS)
        for j, text in enumerate(unit_texts):
            for k, toks in enumerate(_name_words(text, _singular)):
                if toks:
                    feats[j, k] = sum(t in now_set for t in toks) / len(toks)
                    feats[j, 2 + k] = float(_phrase_in(toks, now))
                    feats[j, 4 + k] = sum(t in before for t in toks) / len(toks)
        return feats
    feats = _memo(_POINTER_CACHE, (tuple(words), tuple(prev_words), tuple(unit_texts)), compute)
    return torch.nn.functional.pad(feats, (0, 0, 0, U - feats.shape[0]))


def full_precision(device: torch.device):
    """Autocast off: a frozen encoder's outputs are cached on disk and in memory under a key of its
    weights alone, so they must not depend on whether the run that computed them used --amp (a
    bf16 entry would be read back by every later float32 run). Filling the cache is a one-off."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def pad_ids(seqs: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Id lists -> (ids [N, L], mask [N, L]) with L >= 1, built on the host, moved in one copy."""
    L = max(1, max((len(s) for s in seqs), default=0))
    ids = [list(s) + [0] * (L - len(s)) for s in seqs]
    mask = [[True] * len(s) + [False] * (L - len(s)) for s in seqs]
    return to_device(ids, torch.long, device), to_device(mask, torch.bool, device)


def turn_starts(examples) -> list[int]:
    """Where each interaction's first turn sits among all turns of the batch, laid out in order."""
    out, r = [], 0
    for ex in examples:
        out.append(r)
        r += len(ex)
    return out


@dataclass
class Example:
    """One interaction, ready for the model."""
    db_id: str
    unit_texts: list[str]              # what the encoder reads for each DB unit
    words: list[list[str]]             # per turn: utterance words
    targets: list[list[int]]           # per turn: joint ids, end token included
    tokens: list[list[str]] | None = None   # per turn: target tokens (for decoding to SQL)
    source: tuple = ()                 # (file, interaction index), for messages
    table_units: list[int] | None = None    # which units are tables (for constrained decoding)
    unit_tables: list[int] | None = None    # per unit, the table it belongs to (--previous_tables)
    unit_kinds: list[int] | None = None     # per unit, Schema.unit_kinds() (--unit_types)

    def __len__(self):
        return len(self.words)


@dataclass
class ModelOutput:
    logp: torch.Tensor          # [Nt, L, K + U] log-probabilities, teacher-forced
    targets: torch.Tensor       # [Nt, L] joint ids (0 where padded)
    mask: torch.Tensor          # [Nt, L] bool
    turn_index: torch.Tensor    # [Nt] the turn's position in its interaction
    relevance_loss: torch.Tensor | None = None


class Text2SQL(nn.Module):
    def __init__(self, encoder: SchemaEncoder, vocab: Vocab, decoder_size: int = 300,
                 turn_size: int = 300, max_turn: int = 5, dropout: float = 0.1,
                 unit_mask: bool = False, utterance_rnn: bool = False, previous_utterances: int = 0,
                 joint_layers: int = 0, previous_tables: bool = False, unit_types: bool = False,
                 query_tables: bool = False, link_bonus: bool = False, input_feeding: bool = True):
        super().__init__()
        H = encoder.hidden_size
        self.vocab = vocab
        self.max_turn = max_turn
        self.use_unit_mask = unit_mask
        self.encoder = encoder
        # --bert_mix: the encoder hands over its layers side by side; their weights train here,
        # with the layers over the encoder, so a frozen encoder's cache keeps serving them
        self.layer_mix = ScalarMix(encoder.layers, H) if encoder.stack else None
        self.attention = UtteranceDBAttention(H)
        self.summary = TurnSummary(H, turn_size)
        self.turn_rnn = TurnRNN(turn_size, turn_size)
        self.history = nn.Linear(turn_size, H)          # the history, added to utterance tokens
        self.prev_encoder = PreviousQueryEncoder(H, decoder_size)
        self.decoder = Decoder(H, decoder_size, len(vocab), state_size=2 * turn_size,
                               prev_size=self.prev_encoder.out_size, dropout=dropout,
                               query_tables=query_tables,
                               link_features=N_POINTER_LINKS if link_bonus else 0,
                               input_feeding=input_feeding)
        self.drop = nn.Dropout(dropout)
        # utterance-level mask: which DB units this turn can be about (trained on the gold's units)
        self.relevance = nn.Linear(H, 1) if unit_mask else None
        # schema linking: how much of a unit's table and column names the utterance mentions
        self.link = nn.Linear(2, H)
        # what the names do not say: a unit's kind (table, star, or its column's type) and whether
        # it is a primary or foreign key, as IRNet and RAT-SQL tell their encoders
        self.unit_type = None
        if unit_types:
            self.unit_type = nn.Embedding(4 * len(UNIT_KINDS), H)
            nn.init.normal_(self.unit_type.weight, std=0.1)
        # EditSQL's utterance BiLSTM over BERT's outputs: with a frozen encoder, the only
        # trainable layer that reads each turn's words in order
        self.utt_rnn = UtteranceRNN(H) if utterance_rnn else None
        self.joint = nn.ModuleList(JointLayer(H, dropout) for _ in range(joint_layers))
        # EditSQL's decoder also reads the words of earlier turns ("maximum_utterances"), each
        # marked by how many turns back it was said (0: this turn)
        self.previous_utterances = previous_utterances
        self.utt_distance = None
        if previous_utterances > 0:
            self.utt_distance = nn.Embedding(previous_utterances + 1, H)
            nn.init.normal_(self.utt_distance.weight, std=0.1)
        # a learnt vector added to every unit of a table the previous query used: a follow-up's
        # "their country" is then drawn to that table's column, not a same-named one elsewhere
        # (FROM-less targets name no tables; a unit-level copy only reaches the units used before)
        self.prev_table = None
        if previous_tables:
            self.prev_table = nn.Parameter(torch.randn(H) * 0.1)
        # --sample_previous: the share of follow-up turns that, in training, read the model's own
        # prediction of the turn before instead of its gold query (set by train.build_model)
        self.sample_previous = 0.0
        self.sample_chain = False   # --sample_chain: predictions made from the previous query read
        self.from_less = False      # --remove_from targets: constrained decoding must name a unit
        self._cache: dict = {}
        self._bottom: dict = {}     # --tune_top_layers: (db, words) -> the frozen layers' outputs
        self.disk_cache = None      # an EncoderCache, for a frozen or partly frozen encoder (train.build_model)
        # False: a frozen encoder runs again on every call, as EditSQL's does (the baseline of
        # scripts/bench_train.py); the outputs are the same either way
        self.memoise = True

    # ---- encoding ------------------------------------------------------------------------
    @staticmethod
    def rows_of(examples: list[Example]) -> list[tuple[str, list[str], list[str]]]:
        """Encoder rows (db_id, utterance words, unit texts): per interaction its DB-only pre-turn,
        then its turns."""
        return [row for ex in examples
                for row in [(ex.db_id, [], ex.unit_texts)] + [(ex.db_id, w, ex.unit_texts) for w in ex.words]]

    def encode(self, rows):
        """Rows -> padded tensors on the model device: utt [N, W, H], utt_mask [N, W], units [N, U, H],
        unit_mask [N, U]."""
        db_ids, utterances, schemas = (list(x) for x in zip(*rows))
        if self.encoder.fixed:
            utt, utt_mask, units, unit_mask = self._encode_cached(utterances, schemas, db_ids)
        else:
            states = self._bottom_cached(utterances, schemas, db_ids) if self.encoder.tuned else None
            out = self.encoder(utterances, schemas, states=states)
            utt, utt_mask, units, unit_mask = out.utterance, out.utterance_mask, out.units, out.unit_mask
        if self.layer_mix is not None:          # [N, W, layers * H] -> [N, W, H]
            utt, units = self.layer_mix(utt), self.layer_mix(units)
        return utt, utt_mask, units, unit_mask

    def _memoised(self, store: dict, db_ids, utterances, schemas, load, compute, save) -> list:
        """Per row, a frozen computation's value for its (database, utterance), each computed once:
        from ``store`` (memory), else ``load(disk, key, i)`` from the disk cache, else
        ``compute(rows)`` for all the rest in one call, then kept in ``store`` and written with
        ``save(disk, key, value)``. Without ``memoise`` everything is computed again."""
        keys = [(db, tuple(w)) for db, w in zip(db_ids, utterances)]
        cache, disk = (store, self.disk_cache) if self.memoise else ({}, None)
        first: dict = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)              # the pre-turn repeats within a batch: compute it once
        todo = [i for k, i in first.items() if k not in cache]
        disk_keys = {}
        if todo and disk is not None:
            disk_keys = {i: entry_key(db_ids[i], utterances[i], schemas[i]) for i in todo}
            left = []
            for i in todo:
                hit = load(disk, disk_keys[i], i)
                if hit is None:
                    left.append(i)
                else:
                    cache[keys[i]] = hit
            todo = left
        if todo:
            for i, value in zip(todo, compute(todo)):
                cache[keys[i]] = value
                if disk is not None:
                    save(disk, disk_keys[i], value)
        return [cache[k] for k in keys]

    def _bottom_cached(self, utterances, schemas, db_ids):
        """--tune_top_layers: per row, the frozen layers' outputs for each of its passes, computed
        once per (database, utterance) and kept in memory (about 0.8 KB per word piece)."""
        dev = next(self.parameters()).device
        layouts: dict = {}

        def layout(i):
            if i not in layouts:
                layouts[i] = self.encoder.layout(utterances[i], schemas[i])
            return layouts[i]

        def load(disk, key, i):
            hit = disk.get_states(key, [len(p.ids) for p in layout(i).passes])
            return None if hit is None else [(x.to(dev), None if r is None else r.to(dev)) for x, r in hit]

        def compute(rows):
            with full_precision(dev):
                states = self.encoder.bottom_states([p for i in rows for p in layout(i).passes], dev)
            out, at = [], 0
            for i in rows:
                out.append(states[at:at + len(layout(i).passes)])
                at += len(layout(i).passes)
            return out

        return self._memoised(self._bottom, db_ids, utterances, schemas, load, compute,
                              lambda disk, key, value: disk.put_states(key, value))

    def encode_rows(self, rows, kinds: list[list[int] | None] | None = None):
        """Encoder, schema-linking features and utterance-DB attention for each row on its own
        (rows never look at each other here) -> (utt, utt_mask, units, unit_mask, summaries [N, S]).
        ``kinds``: per row, its units' Schema.unit_kinds() (needed with --unit_types)."""
        utt, utt_mask, units, unit_mask = self.encode(rows)            # [N, W, H], [N, U, H]
        links = to_device(self.link_features(rows, units.shape[1]), units.dtype, units.device)
        units = units + self.link(links) * unit_mask.unsqueeze(-1)
        if self.unit_type is not None:
            U = units.shape[1]
            if kinds is None or any(k is None for k in kinds):
                raise ValueError("--unit_types needs Example.unit_kinds")
            ids = to_device([k + [0] * (U - len(k)) for k in kinds], torch.long, units.device)   # [N, U]
            units = units + self.unit_type(ids) * unit_mask.unsqueeze(-1)
        if len(self.joint):
            W = utt.shape[1]
            x, mask = torch.cat([utt, units], 1), torch.cat([utt_mask, unit_mask], 1)   # [N, W + U, H]
            for layer in self.joint:
                x = layer(x, mask)
            utt, units = x[:, :W], x[:, W:]
        utt, units = self.attention(self.drop(utt), utt_mask, self.drop(units), unit_mask)
        return utt, utt_mask, units, unit_mask, self.summary(utt, utt_mask, units, unit_mask)

    def _encode_cached(self, utterances, schemas, db_ids):
        """A frozen encoder gives the same vectors for the same input: compute each once."""
        dev = next(self.parameters()).device

        def load(disk, key, i):
            hit = disk.get(key, len(utterances[i]), len(schemas[i]))
            return None if hit is None else (hit[0].to(dev), hit[1].to(dev))

        def compute(rows):
            with full_precision(dev):
                out = self.encoder([utterances[i] for i in rows], [schemas[i] for i in rows])
            n_words, n_units = out.utterance_mask.sum(1).tolist(), out.unit_mask.sum(1).tolist()
            # copies, not views: a view keeps the whole call's padded [N, W, H] and [N, U, H]
            # alive for as long as any of its rows is cached, and a batch mixing a small schema
            # with SParC's biggest pads every row to the biggest (a recipe run held 5.9 GB for
            # 0.8 GB of vectors; with --bert_mix's 7 stacked layers, 17 GB before epoch 1 ended)
            return [(out.utterance[j, :n_words[j]].detach().clone(), out.units[j, :n_units[j]].detach().clone())
                    for j in range(len(rows))]

        rows = self._memoised(self._cache, db_ids, utterances, schemas, load, compute,
                              lambda disk, key, value: disk.put(key, *value))
        pad = nn.utils.rnn.pad_sequence
        utt = pad([r[0] for r in rows], batch_first=True)                  # [N, W, H]
        if utt.shape[1] == 0:          # only pre-turns: keep one (masked) utterance slot
            utt = utt.new_zeros(utt.shape[0], 1, utt.shape[2])
        units = pad([r[1] for r in rows], batch_first=True)                # [N, U, H]
        n_words = to_device([r[0].shape[0] for r in rows], torch.long, dev)
        n_units = to_device([r[1].shape[0] for r in rows], torch.long, dev)
        utt_mask = torch.arange(utt.shape[1], device=dev) < n_words.unsqueeze(1)      # [N, W]
        unit_mask = torch.arange(units.shape[1], device=dev) < n_units.unsqueeze(1)   # [N, U]
        return utt, utt_mask, units, unit_mask

    def link_features(self, rows, U: int) -> torch.Tensor:
        """[N, U, 2]: per row and unit, the share of its table's and its column's name words that
        occur in the utterance. Pretrained encoders align words and names on their own; these two
        numbers make the match explicit for any encoder. A pre-turn (no words) gets zeros."""
        return torch.stack([_link(words, unit_texts, U) for _, words, unit_texts in rows])

    def contextualise(self, examples: list[Example]):
        """Encoder, utterance-DB attention and turn RNN for every turn of the batch, batched over
        interactions: one encoder call, one attention call and one turn-RNN pass for all of them."""
        kinds = [ex.unit_kinds for ex in examples for _ in range(len(ex) + 1)]     # as rows_of lays rows out
        utt, utt_mask, units, unit_mask, summaries = self.encode_rows(self.rows_of(examples), kinds)
        # rows are [pre-turn, turn 1, ..., turn n] per interaction; lay them out as [B, T]
        B, T = len(examples), max(len(ex) for ex in examples)
        pre_rows, turn_rows, flat, real = [], [], [], []
        r = 0
        for b, ex in enumerate(examples):
            pre_rows.append(r)
            turn_rows.append([r + 1 + min(t, len(ex) - 1) for t in range(T)])
            real.append([float(t < len(ex)) for t in range(T)])
            flat += [b * T + t for t in range(len(ex))]
            r += len(ex) + 1
        dev = utt.device
        turn_rows_t = to_device(turn_rows, torch.long, dev)                    # [B, T]
        flat_t = to_device(flat, torch.long, dev)                              # [Nt]
        turns = summaries[turn_rows_t] * to_device(real, summaries.dtype, dev).unsqueeze(-1)  # [B, T, S]
        hist, state = self.turn_rnn(summaries[to_device(pre_rows, torch.long, dev)], turns,
                                    self.max_turn)                             # [B, T, S] each
        hist = hist.reshape(B * T, -1)[flat_t]                                 # [Nt, S]
        state = state.reshape(B * T, -1)[flat_t]                               # [Nt, S]
        rows_t = turn_rows_t.reshape(-1)[flat_t]                               # [Nt] rows of real turns
        utt_mask_t = utt_mask[rows_t]                                          # [Nt, W]
        utt_t = self.turn_tokens(utt[rows_t], utt_mask_t, hist)                # [Nt, W, H]
        if self.utt_distance is not None:
            utt_t, utt_mask_t = self.with_previous_utterances(utt_t, utt_mask_t, [len(ex) for ex in examples])
        ctx = {
            "utt": utt_t, "utt_mask": utt_mask_t,
            "units": units[rows_t], "unit_mask": unit_mask[rows_t],
            # the decoder starts from the history and this turn's state together
            "state": torch.cat([hist, state], -1),                             # [Nt, 2S]
        }
        if self.needs_unit_tables():
            ctx["unit_tables"] = self.unit_tables([ex for ex in examples for _ in range(len(ex))],
                                                  units.shape[1], dev)           # [Nt, U]
        if self.decoder.link_gate is not None:
            ctx["unit_links"] = self.pointer_links([(ex, t) for ex in examples for t in range(len(ex))],
                                                   units.shape[1], units)        # [Nt, U, F]
        return ctx

    def pointer_links(self, turns, U: int, like: torch.Tensor) -> torch.Tensor:
        """[Nt, U, N_POINTER_LINKS] --link_bonus' features of each (example, turn index); the turn
        before is out of reach where --max_turn is 1 (the model then reads no history)."""
        feats = [_pointer_links(ex.words[t], ex.words[t - 1] if t > 0 and self.max_turn > 1 else [],
                                ex.unit_texts, U) for ex, t in turns]
        return to_device(torch.stack(feats), like.dtype, like.device)

    def needs_unit_tables(self) -> bool:
        return self.prev_table is not None or self.decoder.query_table is not None

    def unit_tables(self, turns: list[Example], U: int, device) -> torch.Tensor:
        """[Nt, U] the table of each unit of each turn's schema (-1 where padded)."""
        for ex in turns:
            if ex.unit_tables is None:
                raise ValueError(f"--previous_tables and --query_tables need Example.unit_tables ({ex.db_id})")
        return to_device([ex.unit_tables + [-1] * (U - len(ex.unit_tables)) for ex in turns],
                         torch.long, device)

    def turn_tokens(self, utt, utt_mask, hist):
        """The tokens the decoder attends over: utt [Nt, W, H] with the history hist [Nt, S] added
        to every token, then (``--utterance_rnn``) read in order by the BiLSTM, residually."""
        utt = (utt + self.history(hist).unsqueeze(1)) * utt_mask.unsqueeze(-1)   # [Nt, W, H]
        if self.utt_rnn is not None:
            utt = utt + self.utt_rnn(self.drop(utt), utt_mask)
        return utt

    def utterance_window(self) -> int:
        """How many earlier turns' words the decoder reads: --previous_utterances, within --max_turn."""
        return min(self.previous_utterances, max(self.max_turn, 1) - 1)

    def with_previous_utterances(self, utt, utt_mask, lengths: list[int]):
        """Each turn's tokens followed by those of its k earlier turns, every token plus the
        embedding of its distance: utt [Nt, W, H], utt_mask [Nt, W] (turns of interactions of
        ``lengths`` turns, in order) -> [Nt, (k+1) W, H], [Nt, (k+1) W]. A first turn's missing
        predecessors are masked padding (zeros)."""
        k = self.utterance_window()
        Nt, W, H = utt.shape
        src, start = [], 0            # src[i][d]: the row of turn i's d-th predecessor, Nt if none
        for n in lengths:
            src += [[start + t - d if t - d >= 0 else Nt for d in range(k + 1)] for t in range(n)]
            start += n
        src_t = to_device(src, torch.long, utt.device)                              # [Nt, k+1]
        utt_z = torch.cat([utt, utt.new_zeros(1, W, H)])                            # [Nt+1, W, H]
        mask_z = torch.cat([utt_mask, utt_mask.new_zeros(1, W)])                    # [Nt+1, W]
        mask = mask_z[src_t]                                                        # [Nt, k+1, W]
        tokens = utt_z[src_t] + self.utt_distance.weight[:k + 1].view(1, k + 1, 1, H)  # [Nt, k+1, W, H]
        tokens = tokens * mask.unsqueeze(-1).to(tokens.dtype)
        return tokens.reshape(Nt, (k + 1) * W, H), mask.reshape(Nt, (k + 1) * W)

    def relevance_scores(self, units: torch.Tensor) -> torch.Tensor:
        return self.relevance(units).squeeze(-1)                         # [Nt, U]

    def decoding_mask(self, ctx) -> torch.Tensor:
        """Units the decoder may point at: all real units, or (``--unit_mask``, not training) the
        ones the relevance head keeps; never none."""
        mask = ctx["unit_mask"]
        if self.relevance is None or self.training:
            return mask
        keep = (self.relevance_scores(ctx["units"]) > 0) & mask
        empty = ~keep.any(-1, keepdim=True)
        return torch.where(empty, mask, keep)

    def previous(self, units: torch.Tensor, prev_ids: list[list[int]]):
        """Encode each turn's previous SQL (joint ids, no end token) against its own units [Nt, U, H]."""
        ids, mask = pad_ids(prev_ids, units.device)                      # [Nt, P]
        emb = self.decoder.embed(ids, units) * mask.unsqueeze(-1)
        return self.prev_encoder(emb, mask), mask, ids

    def memory(self, ctx, prev_ids, rows=None) -> DecoderMemory:
        """What the decoder reads, for all turns of ``ctx`` or only ``rows`` of them."""
        part = ctx if rows is None else {k: v[rows] for k, v in ctx.items()}
        units = part["units"]
        if self.prev_table is not None:
            units = units + self.previous_table_flags(part["unit_tables"], prev_ids).unsqueeze(-1) * self.prev_table
        prev, prev_mask, ids = self.previous(units, prev_ids)
        return DecoderMemory(utt=part["utt"], utt_mask=part["utt_mask"], units=units,
                             unit_mask=self.decoding_mask(part), prev=prev, prev_mask=prev_mask,
                             prev_ids=ids, unit_tables=part.get("unit_tables"),
                             unit_links=part.get("unit_links"))

    def previous_table_flags(self, unit_tables: torch.Tensor, prev_ids: list[list[int]]) -> torch.Tensor:
        """unit_tables [Nt, U], each turn's previous SQL (joint ids) -> [Nt, U] float: 1 where the
        unit's table is one a unit of the previous SQL belongs to."""
        ids, mask = pad_ids(prev_ids, unit_tables.device)                         # [Nt, P]
        tab = unit_table_ids(ids, unit_tables, len(self.vocab), mask)             # [Nt, P]
        return same_table(tab, unit_tables).any(1).to(self.prev_table.dtype)      # [Nt, U]

    def gold_previous(self, examples: list[Example]) -> list[list[int]]:
        out = []
        for ex in examples:
            for t in range(len(ex)):
                use = t > 0 and self.max_turn > 1
                out.append(ex.targets[t - 1][:-1] if use else [])
        return out

    def sampled_previous(self, examples: list[Example], ctx) -> list[list[int]]:
        """The previous query each turn reads in training: the gold one, or (``--sample_previous``
        p, for a share p of follow-up turns drawn afresh each step) the model's own greedy
        prediction of the turn before. Decoding sees only predictions, and a model that has only
        read gold previous queries trusts them too much: with gold previous queries the best run
        matched 47% of dev questions, with its own 36%.

        The predictions are made with the decoder's dropout off and no gradient. By default each
        is made against its own gold previous query, in one batched pass over the turns needed
        (one turn deep). With ``sample_chain`` each is made against the previous query that turn
        itself reads, gold or predicted, one batched pass per turn position: a turn can then read
        a prediction made from a prediction, as in decoding."""
        gold = self.gold_previous(examples)
        if not self.training or self.sample_previous <= 0 or self.max_turn <= 1:
            return gold
        starts = turn_starts(examples)
        follow = [(t, starts[b] + t) for b, ex in enumerate(examples) for t in range(1, len(ex))]
        draw = torch.rand(len(follow)) < self.sample_previous                  # [follow-ups]
        swap = [(t, i) for (t, i), d in zip(follow, draw.tolist()) if d]  # turns that read a prediction
        if not swap:
            return gold
        from .decoding import greedy
        rounds = ([[i for t, i in swap if t == pos] for pos in sorted({t for t, _ in swap})]
                  if self.sample_chain else [[i for _, i in swap]])
        out = list(gold)
        was = self.decoder.training
        self.decoder.eval()
        with torch.no_grad():
            for turns in rounds:       # in a chain, a round reads what the rounds before wrote
                rows = [i - 1 for i in turns]                                  # the turns to predict
                rows_t = to_device(rows, torch.long, ctx["utt"].device)
                mem = self.memory(ctx, [out[i] for i in rows], rows_t)
                # gold[i] is turn i-1's target without its end token: the longest, plus 10 steps
                preds = greedy(self.decoder, ctx["state"][rows_t], mem, self.vocab, None,
                               max_len=max(len(gold[i]) for i in turns) + 11)
                for i, p in zip(turns, preds):
                    out[i] = p
        self.decoder.train(was)
        return out

    # ---- teacher forcing -----------------------------------------------------------------
    def forward(self, examples: list[Example]) -> ModelOutput:
        ctx = self.contextualise(examples)
        mem = self.memory(ctx, self.sampled_previous(examples, ctx))
        flat = [t for ex in examples for t in ex.targets]
        dev = ctx["utt"].device
        targets, mask = pad_ids(flat, dev)                                  # [Nt, L]
        logp = self.decoder(ctx["state"], targets, mem, go=self.vocab.go, targets_mask=mask,
                            lengths=[len(t) for t in flat])
        turn_index = to_device([t for ex in examples for t in range(len(ex))], torch.long, dev)
        rel = None
        if self.relevance is not None and self.training:
            rel = self._relevance_loss(ctx, flat)
        return ModelOutput(logp=logp, targets=targets, mask=mask, turn_index=turn_index, relevance_loss=rel)

    def forward_unbatched(self, examples: list[Example]) -> ModelOutput:
        """The same computation the EditSQL way: one interaction at a time, and within it one
        turn at a time through the encoder, the attention, the turn RNN and the decoder.

        The reference for the batched path (equal within float tolerance, see the tests) and
        the baseline of ``scripts/bench_train.py``. Teacher-forced, like ``forward``."""
        logps, targets, masks, turn_index = [], [], [], []
        for ex in examples:
            pre = self.encode_rows(self.rows_of([ex])[:1], [ex.unit_kinds])[-1]  # [1, S]
            summaries, said = [], []
            for t, words in enumerate(ex.words):
                utt, utt_mask, units, unit_mask, summary = self.encode_rows([(ex.db_id, words, ex.unit_texts)],
                                                                            [ex.unit_kinds])
                summaries.append(summary)
                # the turn RNN re-reads this interaction's summaries so far: the window rule of
                # --max_turn then lives in one place, TurnRNN.forward
                hist, state = self.turn_rnn(pre, torch.stack(summaries, 1), self.max_turn)
                hist, state = hist[:, -1], state[:, -1]                           # [1, S]
                tokens = self.turn_tokens(utt, utt_mask, hist)                   # [1, W_t, H]
                said.append((tokens, utt_mask))
                tok_mask = utt_mask
                if self.utt_distance is not None:
                    # this turn, then each earlier one, each with its own width
                    parts = [(said[t - d][0] + self.utt_distance.weight[d] * said[t - d][1].unsqueeze(-1),
                              said[t - d][1]) for d in range(min(t, self.utterance_window()) + 1)]
                    tokens = torch.cat([p[0] for p in parts], 1)
                    tok_mask = torch.cat([p[1] for p in parts], 1)
                ctx = {"utt": tokens, "utt_mask": tok_mask, "units": units, "unit_mask": unit_mask}
                if self.needs_unit_tables():
                    ctx["unit_tables"] = self.unit_tables([ex], units.shape[1], units.device)
                if self.decoder.link_gate is not None:
                    ctx["unit_links"] = self.pointer_links([(ex, t)], units.shape[1], units)
                prev = ex.targets[t - 1][:-1] if t > 0 and self.max_turn > 1 else []
                mem = self.memory(ctx, [prev])
                tgt, mask = pad_ids([ex.targets[t]], utt.device)                  # [1, L]
                logps.append(self.decoder(torch.cat([hist, state], -1), tgt, mem, go=self.vocab.go,
                                          targets_mask=mask))
                targets.append(tgt)
                masks.append(mask)
                turn_index.append(t)
        L = max(x.shape[1] for x in targets)
        J = max(x.shape[2] for x in logps)            # keywords + the largest schema's units
        pad = lambda x, v: nn.functional.pad(x, (0, L - x.shape[1]), value=v)   # noqa: E731
        # padding steps are masked; a smaller schema's missing units get a masked unit's log-prob
        logps = [nn.functional.pad(x, (0, J - x.shape[2], 0, L - x.shape[1]), value=NEG) for x in logps]
        return ModelOutput(logp=torch.cat(logps),
                           targets=torch.cat([pad(x, 0) for x in targets]),
                           mask=torch.cat([pad(x, False) for x in masks]),
                           turn_index=to_device(turn_index, torch.long, logps[0].device))

    def _relevance_loss(self, ctx, flat):
        K = len(self.vocab)
        gold = torch.zeros_like(ctx["unit_mask"], dtype=torch.float)
        for i, t in enumerate(flat):
            for j in t:
                if j >= K:
                    gold[i, j - K] = 1.0
        scores = self.relevance_scores(ctx["units"])
        per = nn.functional.binary_cross_entropy_with_logits(scores, gold, reduction="none")
        m = ctx["unit_mask"].float()
        return (per * m).sum() / m.sum().clamp(min=1.0)

    # ---- decoding ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, examples: list[Example], use_gold_previous: bool = False,
                max_len: int = 100, beam: int = 1, constrained: bool = False,
                known: list[list[list[int]]] | None = None,
                ensemble: list["Text2SQL"] = (), length_penalty: float = 0.0,
                turn_beam: int = 1) -> list[list[list[int]]]:
        """Decoding, turn by turn: each turn sees the previous turn's *prediction* (or, with
        ``use_gold_previous``, the gold one). Greedy or beam search (``beam`` > 1), batched over the
        interactions either way; ``constrained`` keeps every prefix well-formed SQL. ``known`` holds
        predictions already made for the first turns of each interaction (a conversation in
        progress): those turns are not decoded again. ``ensemble``: other models on the same
        vocabulary; each step then decodes from the mean of all the models' distributions, and
        every model reads the ensemble's previous prediction. ``length_penalty``: beam search ranks
        finished queries by GNMT's length-normalised score (``decoding.beam_candidates``).
        ``turn_beam`` K > 1: a beam over whole interactions rather than one turn at a time. Each
        interaction keeps its K best histories (its turns' queries so far, scored by the sum of
        their beam-search scores); each history's next turn is decoded against that history's own
        last query, its K best queries extend it, and the K best extensions go on (needs ``beam``
        >= K and predicted previous queries). A follow-up reads its previous prediction, so a
        wrong query spoils the next turns (after a wrong turn the recipe matches about 1 turn in
        8, after a right one 1 in 2). K = 1 is plain turn-by-turn decoding.
        Returns per interaction, per turn, joint ids without the end token."""
        from .decoding import Grammar, beam_candidates, greedy
        models = [self, *ensemble]
        for m in ensemble:
            if m.vocab.tokens != self.vocab.tokens:
                raise ValueError("an ensemble's models must share one vocabulary (runs trained on the "
                                 "same data with the same target style)")
        if turn_beam > 1 and (use_gold_previous or beam < turn_beam):
            raise ValueError(f"a turn beam of {turn_beam} needs a beam of at least {turn_beam} and "
                             "each turn reading the predicted previous query")
        grammar = Grammar(self.vocab, from_less=self.from_less) if constrained else None
        tables = [ex.table_units for ex in examples]
        ctxs = [m.contextualise(examples) for m in models]
        ctx = ctxs[0]
        starts = turn_starts(examples)
        # per interaction, its histories: (score, the queries of its turns so far); known turns (a
        # conversation in progress) begin its one history, as they were answered, and are not
        # decoded again
        known = list(known or [])
        hyps = [[(0.0, list(known[i]) if i < len(known) else [])] for i in range(len(examples))]
        n_known = [len(h[0][1]) for h in hyps]
        if beam <= 1:
            def search(*args):             # greedy's one query per turn, as a list of candidates
                return [[(0.0, s)] for s in greedy(*args, max_len=max_len)]
        else:
            search = functools.partial(beam_candidates, beam=beam, max_len=max_len,
                                       length_penalty=length_penalty)
        for t in range(max(len(ex) for ex in examples)):
            live = [(i, h) for i, ex in enumerate(examples) if len(ex) > t and t >= n_known[i] for h in hyps[i]]
            if not live:
                continue
            rows = to_device([starts[i] + t for i, _ in live], torch.long, ctx["utt"].device)
            prev = [examples[i].targets[t - 1][:-1] if use_gold_previous else h[1][t - 1]
                    for i, h in live] if t > 0 else [[] for _ in live]
            mems = [m.memory(c, prev if m.max_turn > 1 else [[] for _ in live], rows)
                    for m, c in zip(models, ctxs)]
            if grammar is not None:
                grammar.tables = [tables[i] for i, _ in live]
            cands = search([m.decoder for m in models], [c["state"][rows] for c in ctxs], mems,
                           self.vocab, grammar)
            grown = {}
            for (i, (score, hist)), cs in zip(live, cands):
                grown.setdefault(i, []).extend((score + s, hist + [ids]) for s, ids in cs[:turn_beam])
            for i, g in grown.items():
                hyps[i] = sorted(g, key=lambda x: -x[0])[:turn_beam]     # stable: ties keep beam order
        return [h[0][1] for h in hyps]

