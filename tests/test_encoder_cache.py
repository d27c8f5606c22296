"""The frozen-encoder disk cache: reused across models, keyed by the weights, rebuilt when bad."""
import glob
import os

import pytest
import torch

from test_model import cfg_for, quiet
from text2sql.train import Trainer


def encode_all(tr):
    return tr.model.encode(tr.model.rows_of(tr.train_ex))


def test_second_model_reads_the_cache_and_matches(concert_data, tmp_path):
    cache = str(tmp_path / "cache")
    a = Trainer(cfg_for(concert_data, tmp_path / "a", fix_bert=True, cache_dir=cache), log=quiet, progress=False)
    first = encode_all(a)
    files = glob.glob(os.path.join(cache, "*", "*", "*.pt"))
    n_rows = sum(len(e) + 1 for e in a.train_ex)
    assert len(files) == len({(e.db_id, tuple(w)) for e in a.train_ex for w in [[]] + e.words}) <= n_rows
    b = Trainer(cfg_for(concert_data, tmp_path / "b", fix_bert=True, cache_dir=cache), log=quiet, progress=False)

    def boom(*a, **k):
        raise AssertionError("the encoder ran although every input was cached")
    b.model.encoder.forward = boom
    second = encode_all(b)
    assert b.model.disk_cache.hits == len(files) and b.model.disk_cache.misses == 0
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_corrupt_entry_is_detected_and_rebuilt(concert_data, tmp_path):
    cache = str(tmp_path / "cache")
    a = Trainer(cfg_for(concert_data, tmp_path / "a", fix_bert=True, cache_dir=cache), log=quiet, progress=False)
    first = encode_all(a)
    victim = sorted(glob.glob(os.path.join(cache, "*", "*", "*.pt")))[0]
    with open(victim, "wb") as f:
        f.write(b"not a tensor file")
    b = Trainer(cfg_for(concert_data, tmp_path / "b", fix_bert=True, cache_dir=cache), log=quiet, progress=False)
    with pytest.warns(UserWarning, match="unusable"):
        second = encode_all(b)
    assert b.model.disk_cache.rebuilt == 1
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    torch.load(victim, weights_only=True)   # rewritten, loadable again


def test_changed_weights_use_another_folder(concert_data, tmp_path):
    cache = str(tmp_path / "cache")
    a = Trainer(cfg_for(concert_data, tmp_path / "a", fix_bert=True, cache_dir=cache, seed=0), log=quiet,
                progress=False)
    encode_all(a)
    b = Trainer(cfg_for(concert_data, tmp_path / "b", fix_bert=True, cache_dir=cache, seed=1), log=quiet,
                progress=False)   # another seed: another random tiny BERT
    encode_all(b)
    assert a.model.disk_cache.dir != b.model.disk_cache.dir
    assert b.model.disk_cache.hits == 0
    assert len(os.listdir(cache)) == 2


def test_averaging_other_layers_uses_another_folder(concert_data, tmp_path):
    cache = str(tmp_path / "cache")
    a = Trainer(cfg_for(concert_data, tmp_path / "a", fix_bert=True, cache_dir=cache), log=quiet, progress=False)
    b = Trainer(cfg_for(concert_data, tmp_path / "b", fix_bert=True, cache_dir=cache, bert_layers=2),
                log=quiet, progress=False)      # the same weights, another output
    encode_all(a)
    encode_all(b)
    assert a.model.disk_cache.dir != b.model.disk_cache.dir and b.model.disk_cache.hits == 0


def test_without_memoising_the_frozen_encoder_runs_every_time_with_the_same_outputs(concert_data, tmp_path):
    """The EditSQL regime of scripts/bench_train.py: a frozen encoder run again on every call,
    neither the memory nor the disk cache read or written."""
    tr = Trainer(cfg_for(concert_data, tmp_path / "a", fix_bert=True, cache_dir=str(tmp_path / "cache")),
                 log=quiet, progress=False)
    cached = encode_all(tr)
    tr.model.memoise = False
    calls = []
    forward = tr.model.encoder.forward
    tr.model.encoder.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    hits = tr.model.disk_cache.hits
    for _ in range(2):
        again = encode_all(tr)
        for x, y in zip(cached, again):
            assert torch.allclose(x, y, atol=1e-6)
    assert len(calls) == 2 and tr.model.disk_cache.hits == hits
