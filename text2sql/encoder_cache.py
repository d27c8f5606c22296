"""On-disk cache of a frozen encoder's outputs (``--fix_bert``).

A frozen encoder maps the same (utterance, schema) to the same vectors, so they are computed once
and reused across epochs and runs. Entries live under ``<dir>/<fingerprint>/`` where the
fingerprint hashes the encoder's weights, its tokenizer vocabulary size, its ``max_len`` and the
layers it averages: changed weights land in a new folder, never reading vectors of another model.
Each entry stores its own key and shapes; one that fails to load, or whose key or shapes disagree, is reported, recomputed and
rewritten, never used.
"""
from __future__ import annotations

import hashlib
import os
import warnings

import torch


def encoder_fingerprint(encoder) -> str:
    """With ``tune_top``, only the frozen part (embeddings and the layers below the tuned ones)
    is hashed: the cached states are a function of it alone, and the tuned layers change."""
    h = hashlib.sha256()
    state = encoder.bert.state_dict()
    if encoder.tuned:
        n = encoder.bert.config.num_hidden_layers
        frozen = ("embeddings.",) + tuple(f"encoder.layer.{i}." for i in range(n - encoder.tuned))
        state = {k: v for k, v in state.items() if k.startswith(frozen)}
    for name, p in sorted(state.items()):
        h.update(name.encode())
        t = p.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(f"{encoder.max_len}|{len(encoder.tokenizer)}".encode())
    if encoder.layers != 1:      # (the last layer alone keeps the old fingerprints)
        h.update(f"|layers={encoder.layers}".encode())
    if encoder.stack:            # (each vector holds the layers side by side: another shape)
        h.update(b"|stack")
    if encoder.tuned:
        h.update(f"|tuned={encoder.tuned}|{encoder.state_dtype}".encode())
    return h.hexdigest()[:24]


def entry_key(db_id: str, words: list[str], unit_texts: list[str]) -> str:
    h = hashlib.sha256()
    h.update(db_id.encode())
    h.update(b"\x00")
    h.update("\x1f".join(words).encode())
    h.update(b"\x00")
    h.update("\x1f".join(unit_texts).encode())
    return h.hexdigest()


class EncoderCache:
    def __init__(self, root: str, fingerprint: str):
        self.dir = os.path.join(root, fingerprint)
        os.makedirs(self.dir, exist_ok=True)
        self.hits = self.misses = self.rebuilt = 0

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key[:2], f"{key}.pt")

    def _load(self, key: str, valid):
        """The entry stored under ``key`` if it exists and ``valid(entry)`` holds, else None; an
        unreadable or invalid entry is reported and counted as rebuilt."""
        path = self._path(key)
        if not os.path.exists(path):
            self.misses += 1
            return None
        try:
            e = torch.load(path, map_location="cpu", weights_only=True)
            ok = e["key"] == key and valid(e)
        except Exception as err:   # a torn or foreign file: say so and rebuild it
            ok, reason = False, type(err).__name__
        else:
            reason = "key or shape mismatch"
        if not ok:
            warnings.warn(f"encoder cache entry {path} is unusable ({reason}): recomputing it")
            self.rebuilt += 1
            self.misses += 1
            return None
        self.hits += 1
        return e

    def _save(self, key: str, tensors: dict):
        """Written to a temporary file and renamed: a reader never sees half an entry."""
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save({"key": key, **tensors}, tmp)
        os.replace(tmp, path)

    @staticmethod
    def _cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu").clone()

    def get(self, key: str, n_words: int, n_units: int):
        """(utterance [W, H], units [U, H]) or None when absent or unusable."""
        e = self._load(key, lambda e: (e["utt"].shape[0] <= n_words and e["units"].shape[0] == n_units
                                       and torch.isfinite(e["utt"]).all() and torch.isfinite(e["units"]).all()))
        return None if e is None else (e["utt"], e["units"])

    def put(self, key: str, utt: torch.Tensor, units: torch.Tensor):
        self._save(key, {"utt": self._cpu(utt), "units": self._cpu(units)})

    # ---- --tune_top_layers: the frozen layers' per-piece outputs, per pass -----------------
    def get_states(self, key: str, lengths: list[int]):
        """[(x [L, H], rest [L, H] or None) per pass] or None when absent or unusable; ``lengths``:
        the word pieces of each pass, as the encoder lays the input out now."""
        def valid(e):
            xs, rests = e["x"], e["rest"]
            return (len(xs) == len(lengths) and [x.shape[0] for x in xs] == lengths
                    and (rests is None or [r.shape for r in rests] == [x.shape for x in xs])
                    and all(torch.isfinite(t).all() for t in xs + (rests or [])))
        e = self._load(key, valid)
        if e is None:
            return None
        return list(zip(e["x"], e["rest"] if e["rest"] is not None else [None] * len(e["x"])))

    def put_states(self, key: str, states):
        rests = [r for _, r in states]
        self._save(key, {"x": [self._cpu(x) for x, _ in states],
                         "rest": None if rests[0] is None else [self._cpu(r) for r in rests]})
