"""The whole parser in one place: BERT encoder -> utterance-DB attention -> turn RNN -> decoder.

    turn t of an interaction (plus a DB-only pre-turn before turn 1)
      encoder    [CLS] utterance [SEP] unit [SEP] ...     -> tokens [W, H], units [U, H]
      attention  tokens <-> units, residual               -> tokens', units'
      turn RNN   summary(tokens', units') per turn        -> history h_{t-1}, state s_t
      decoder    init from s_t; attends over tokens' + W h_{t-1}, units', previous SQL
                 -> log_softmax over [keywords; units] per step

Every turn of every interaction in a batch goes through the encoder in one call and through the
decoder together (teacher forcing needs only the gold previous query); only the turn RNN walks
each interaction on its own. Nothing is detached: the loss of turn 3 reaches turn 1's encoding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import UtteranceDBAttention
from .decoder import Decoder, DecoderMemory, PreviousQueryEncoder
from .encoder import SchemaEncoder
from .encoder_cache import entry_key
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
    if head == "link":
        return "attention"
    if head in ("summary", "turn_rnn", "history"):
        return "turn_rnn"
    if head == "decoder" and param_name.split(".")[1] in ("keyword_out", "db_proj", "copy_proj", "keyword_emb"):
        return "output"
    if head == "relevance":
        return "output"
    return "decoder"


def _stem(w: str) -> str:
    w = w.lower()
    for suffix in ("ies", "es", "s"):
        if w.endswith(suffix) and len(w) > len(suffix) + 2:
            return w[:-len(suffix)] + ("y" if suffix == "ies" else "")
    return w


_LINK_CACHE: dict = {}


def _link(words: list[str], unit_texts: list[str], U: int) -> torch.Tensor:
    """[U, 2] link features of one turn (rows past ``len(unit_texts)`` are padding)."""
    key = (tuple(words), tuple(unit_texts))
    feats = _LINK_CACHE.get(key)
    if feats is None:
        said = {_stem(w) for w in words}
        feats = torch.zeros(len(unit_texts), 2)
        for j, text in enumerate(unit_texts):
            table, _, column = text.partition(" . ")
            for k, part in enumerate((table.replace(" *", ""), column)):
                toks = [_stem(t) for t in part.split()]
                if toks:
                    feats[j, k] = sum(t in said for t in toks) / len(toks)
        if len(_LINK_CACHE) > 100000:
            _LINK_CACHE.clear()
        _LINK_CACHE[key] = feats
    return torch.nn.functional.pad(feats, (0, 0, 0, U - feats.shape[0]))


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
                 unit_mask: bool = False):
        super().__init__()
        H = encoder.hidden_size
        self.vocab = vocab
        self.max_turn = max_turn
        self.use_unit_mask = unit_mask
        self.encoder = encoder
        self.attention = UtteranceDBAttention(H)
        self.summary = TurnSummary(H, turn_size)
        self.turn_rnn = TurnRNN(turn_size, turn_size)
        self.history = nn.Linear(turn_size, H)          # the history, added to utterance tokens
        self.prev_encoder = PreviousQueryEncoder(H, decoder_size)
        self.decoder = Decoder(H, decoder_size, len(vocab), state_size=2 * turn_size,
                               prev_size=self.prev_encoder.out_size, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        # utterance-level mask: which DB units this turn can be about (trained on the gold's units)
        self.relevance = nn.Linear(H, 1) if unit_mask else None
        # schema linking: how much of a unit's table and column names the utterance mentions
        self.link = nn.Linear(2, H)
        self._cache: dict = {}
        self.disk_cache = None      # an EncoderCache, for a frozen encoder (see train.build_model)

    # ---- encoding ------------------------------------------------------------------------
    def encode(self, examples: list[Example]):
        """All rows (pre-turn + turns of each interaction) -> padded tensors on the model device."""
        utterances, schemas = [], []
        for ex in examples:
            utterances.append([])                 # the pre-turn: the DB alone
            schemas.append(ex.unit_texts)
            for w in ex.words:
                utterances.append(w)
                schemas.append(ex.unit_texts)
        if self.encoder.fixed:
            return self._encode_cached(utterances, schemas, [ex.db_id for ex in examples for _ in
                                                              range(len(ex) + 1)])
        out = self.encoder(utterances, schemas)
        return out.utterance, out.utterance_mask, out.units, out.unit_mask

    def _encode_cached(self, utterances, schemas, db_ids):
        """A frozen encoder gives the same vectors for the same input: compute each once."""
        keys = [(db, tuple(w)) for db, w in zip(db_ids, utterances)]
        first = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)              # the pre-turn repeats within a batch: encode it once
        todo = [i for k, i in first.items() if k not in self._cache]
        disk_keys = {}
        if todo and self.disk_cache is not None:
            disk_keys = {i: entry_key(db_ids[i], utterances[i], schemas[i]) for i in todo}
            left = []
            for i in todo:
                hit = self.disk_cache.get(disk_keys[i], len(utterances[i]), len(schemas[i]))
                if hit is None:
                    left.append(i)
                else:
                    dev = next(self.parameters()).device
                    self._cache[keys[i]] = (hit[0].to(dev), hit[1].to(dev))
            todo = left
        if todo:
            out = self.encoder([utterances[i] for i in todo], [schemas[i] for i in todo])
            for j, i in enumerate(todo):
                nw = int(out.utterance_mask[j].sum())
                nu = int(out.unit_mask[j].sum())
                self._cache[keys[i]] = (out.utterance[j, :nw].detach(), out.units[j, :nu].detach())
                if self.disk_cache is not None:
                    self.disk_cache.put(disk_keys[i], *self._cache[keys[i]])
        rows = [self._cache[k] for k in keys]
        W = max(1, max(r[0].shape[0] for r in rows))
        U = max(r[1].shape[0] for r in rows)
        H = rows[0][1].shape[-1]
        dev = rows[0][1].device
        utt = torch.zeros(len(rows), W, H, device=dev)
        units = torch.zeros(len(rows), U, H, device=dev)
        utt_mask = torch.zeros(len(rows), W, dtype=torch.bool, device=dev)
        unit_mask = torch.zeros(len(rows), U, dtype=torch.bool, device=dev)
        for i, (u, d) in enumerate(rows):
            utt[i, :u.shape[0]] = u
            utt_mask[i, :u.shape[0]] = True
            units[i, :d.shape[0]] = d
            unit_mask[i, :d.shape[0]] = True
        return utt, utt_mask, units, unit_mask

    def link_features(self, examples: list[Example], U: int) -> torch.Tensor:
        """[N, U, 2]: per row (pre-turn, turns) and unit, the share of its table's and its column's
        name words that occur in the utterance. Pretrained encoders align words and names on their
        own; these two numbers make the match explicit for any encoder."""
        rows = []
        for ex in examples:
            rows.append(torch.zeros(U, 2))                  # the pre-turn has no utterance
            for words in ex.words:
                rows.append(_link(words, ex.unit_texts, U))
        return torch.stack(rows)

    def contextualise(self, examples: list[Example]):
        """Encoder, utterance-DB attention and turn RNN for every turn of the batch."""
        utt, utt_mask, units, unit_mask = self.encode(examples)       # [N, W, H], [N, U, H]
        units = units + self.link(self.link_features(examples, units.shape[1]).to(units.device)) \
            * unit_mask.unsqueeze(-1)
        utt, units = self.attention(self.drop(utt), utt_mask, self.drop(units), unit_mask)
        summaries = self.summary(utt, utt_mask, units, unit_mask)     # [N, S]
        rows, histories, states = [], [], []
        r = 0
        for ex in examples:
            pre, turns = r, list(range(r + 1, r + 1 + len(ex)))
            hist, state = self.turn_rnn(summaries[pre], summaries[turns], self.max_turn)   # [T, S]
            histories.append(hist)
            # the decoder starts from the history and this turn's state together
            states.append(torch.cat([hist, state], -1))
            rows += turns
            r += len(ex) + 1
        rows_t = torch.tensor(rows, device=utt.device)
        history = torch.cat(histories, 0)                                # [Nt, S]
        utt_t = utt[rows_t] + self.history(history).unsqueeze(1)         # [Nt, W, H]
        utt_t = utt_t * utt_mask[rows_t].unsqueeze(-1)
        return {
            "utt": utt_t, "utt_mask": utt_mask[rows_t],
            "units": units[rows_t], "unit_mask": unit_mask[rows_t],
            "state": torch.cat(states, 0),                               # [Nt, 2S]
        }

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
        Nt = len(prev_ids)
        P = max(1, max((len(p) for p in prev_ids), default=0))
        dev = units.device
        ids = torch.zeros(Nt, P, dtype=torch.long, device=dev)
        mask = torch.zeros(Nt, P, dtype=torch.bool, device=dev)
        for i, p in enumerate(prev_ids):
            if p:
                ids[i, :len(p)] = torch.tensor(p, device=dev)
                mask[i, :len(p)] = True
        emb = self.decoder.embed(ids, units) * mask.unsqueeze(-1)
        return self.prev_encoder(emb, mask), mask, ids

    def memory(self, ctx, prev_ids, rows=None) -> DecoderMemory:
        """What the decoder reads, for all turns of ``ctx`` or only ``rows`` of them."""
        part = ctx if rows is None else {k: v[rows] for k, v in ctx.items()}
        prev, prev_mask, ids = self.previous(part["units"], prev_ids)
        return DecoderMemory(utt=part["utt"], utt_mask=part["utt_mask"], units=part["units"],
                             unit_mask=self.decoding_mask(part), prev=prev, prev_mask=prev_mask,
                             prev_ids=ids)

    def gold_previous(self, examples: list[Example]) -> list[list[int]]:
        out = []
        for ex in examples:
            for t in range(len(ex)):
                use = t > 0 and self.max_turn > 1
                out.append(ex.targets[t - 1][:-1] if use else [])
        return out

    # ---- teacher forcing -----------------------------------------------------------------
    def forward(self, examples: list[Example]) -> ModelOutput:
        ctx = self.contextualise(examples)
        mem = self.memory(ctx, self.gold_previous(examples))
        flat = [t for ex in examples for t in ex.targets]
        L = max(1, max(len(t) for t in flat))
        dev = ctx["utt"].device
        targets = torch.zeros(len(flat), L, dtype=torch.long, device=dev)
        mask = torch.zeros(len(flat), L, dtype=torch.bool, device=dev)
        for i, t in enumerate(flat):
            if t:
                targets[i, :len(t)] = torch.tensor(t, device=dev)
                mask[i, :len(t)] = True
        logp = self.decoder(ctx["state"], targets, mem, go=self.vocab.go)
        turn_index = torch.tensor([t for ex in examples for t in range(len(ex))], device=dev)
        rel = None
        if self.relevance is not None and self.training:
            rel = self._relevance_loss(ctx, flat)
        return ModelOutput(logp=logp, targets=targets, mask=mask, turn_index=turn_index, relevance_loss=rel)

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
                max_len: int = 100, beam: int = 1, constrained: bool = False) -> list[list[list[int]]]:
        """Decoding, turn by turn: each turn sees the previous turn's *prediction* (or, with
        ``use_gold_previous``, the gold one). Greedy over all interactions at once, or beam search
        (``beam`` > 1) turn by turn; ``constrained`` keeps every prefix well-formed SQL.
        Returns per interaction, per turn, joint ids without the end token."""
        from .decoding import Grammar, beam_search, greedy
        grammar = Grammar(self.vocab) if constrained else None
        tables = [ex.table_units for ex in examples]
        ctx = self.contextualise(examples)
        starts, r = [], 0
        for ex in examples:
            starts.append(r)
            r += len(ex)
        preds = [[None] * len(ex) for ex in examples]
        for t in range(max(len(ex) for ex in examples)):
            live = [i for i, ex in enumerate(examples) if len(ex) > t]
            rows = torch.tensor([starts[i] + t for i in live], device=ctx["utt"].device)
            prev = []
            for i in live:
                if t == 0 or self.max_turn <= 1:
                    prev.append([])
                else:
                    prev.append(examples[i].targets[t - 1][:-1] if use_gold_previous else preds[i][t - 1])
            mem = self.memory(ctx, prev, rows)
            if grammar is not None:
                grammar.tables = [tables[i] for i in live]
            if beam <= 1:
                seqs = greedy(self.decoder, ctx["state"][rows], mem, self.vocab, grammar, max_len)
            else:
                seqs = []
                for k in range(len(live)):
                    if grammar is not None:
                        grammar.tables = [tables[live[k]]]
                    seqs.append(beam_search(self.decoder, ctx["state"][rows[k:k + 1]],
                                            mem.select(slice(k, k + 1)), self.vocab, grammar, beam, max_len))
            for k, i in enumerate(live):
                preds[i][t] = seqs[k]
        return preds

