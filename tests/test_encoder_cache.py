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


def test_the_memory_cache_holds_each_rows_own_vectors_not_views_of_the_padded_batch(concert_data, tmp_path):
    """Rows of one encoder call are padded to its longest utterance (and biggest schema); a cached
    row must own just its vectors, or every call's padded tensor stays in memory for the run."""
    tr = Trainer(cfg_for(concert_data, tmp_path / "a", fix_bert=True, cache_dir=""), log=quiet, progress=False)
    encode_all(tr)
    lengths = {t.shape[0] for utt, _ in tr.model._cache.values() for t in [utt]}
    assert len(lengths) > 1                       # utterances of several lengths were padded together
    for utt, units in tr.model._cache.values():
        for t in (utt, units):
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_averaging_other_layers_uses_another_folder(concert_data, tmp_path):
    cache = str(tmp_path / "cache")
    a = Trainer(cfg_for(concert_data, tmp_path / "a", fix_bert=True, cache_dir=cache), log=quiet, progress=False)
    b = Trainer(cfg_for(concert_data, tmp_path / "b", fix_bert=True, cache_dir=cache, bert_layers=2),
                log=quiet, progress=False)      # the same weights, another output
    encode_all(a)
    encode_all(b)
    assert a.model.disk_cache.dir != b.model.disk_cache.dir and b.model.disk_cache.hits == 0


def test_a_scalar_mix_over_a_frozen_encoder_starts_as_the_mean_learns_and_reuses_its_stacked_cache(
        concert_data, tmp_path):
    """--bert_mix with --fix_bert: the cache keeps each layer (another folder than the mean's),
    the model's first encoding equals the plain --bert_layers run's, the mix's weights get gradient
    and move while BERT stays frozen, and a second run reads every stacked entry back from disk."""
    cache = str(tmp_path / "cache")
    mean = Trainer(cfg_for(concert_data, tmp_path / "mean", fix_bert=True, cache_dir=cache, bert_layers=2),
                   log=quiet, progress=False)
    mix = Trainer(cfg_for(concert_data, tmp_path / "mix", fix_bert=True, cache_dir=cache, bert_layers=2,
                          bert_mix=True), log=quiet, progress=False)
    assert mix.model.disk_cache.dir != mean.model.disk_cache.dir
    for x, y in zip(encode_all(mean), encode_all(mix)):        # the same seed: the same tiny BERT
        assert torch.allclose(x.float(), y.float(), atol=1e-5)
    bert_before = {n: p.clone() for n, p in mix.model.encoder.bert.named_parameters()}
    logits = mix.model.layer_mix.logits.detach().clone()
    mix.run()
    assert not torch.allclose(mix.model.layer_mix.logits, logits)
    import json                    # the weights each evaluation scored with are logged beside it
    rows = [json.loads(l) for l in open(os.path.join(mix.run_dir, "metrics.jsonl"))]
    assert rows and all(len(r["layer_mix"]) == 2 for r in rows)
    w = mix.model.layer_mix.weights().tolist()
    assert rows[-1]["layer_mix"] == [round(x, 4) for x in w] and rows[-1]["layer_mix"] != [0.5, 0.5]
    assert all(torch.equal(p, bert_before[n]) for n, p in mix.model.encoder.bert.named_parameters())
    again = Trainer(cfg_for(concert_data, tmp_path / "again", fix_bert=True, cache_dir=cache, bert_layers=2,
                            bert_mix=True), log=quiet, progress=False)
    encode_all(again)
    assert again.model.disk_cache.hits > 0 and again.model.disk_cache.misses == 0


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


def test_tuned_runs_share_the_frozen_layers_states_on_disk(concert_data, tmp_path):
    """--tune_top_layers: a second run reads every frozen state from disk, whatever its tuned
    layer holds; a corrupt entry is recomputed; other frozen weights use another folder."""
    cache = str(tmp_path / "cache")
    a = Trainer(cfg_for(concert_data, tmp_path / "a", tune_top_layers=1, cache_dir=cache), log=quiet, progress=False)
    a.model.eval()
    with torch.no_grad():
        first = encode_all(a)
    files = sorted(glob.glob(os.path.join(cache, "*", "*", "*.pt")))
    assert len(files) == len({(e.db_id, tuple(w)) for e in a.train_ex for w in [[]] + e.words})

    b = Trainer(cfg_for(concert_data, tmp_path / "b", tune_top_layers=1, cache_dir=cache), log=quiet, progress=False)
    from text2sql.encoder_cache import encoder_fingerprint
    with torch.no_grad():                      # the tuned layer may differ: the folder is the same
        b.model.encoder.bert.encoder.layer[-1].output.dense.bias.add_(1.0)
    assert encoder_fingerprint(b.model.encoder) == os.path.basename(a.model.disk_cache.dir)
    b.model.load_state_dict(a.model.state_dict())

    def boom(*args, **kw):
        raise AssertionError("the frozen layers ran although every input was cached")
    b.model.encoder.bottom_states = boom
    b.model.eval()
    with torch.no_grad():
        second = encode_all(b)
    assert b.model.disk_cache.hits == len(files) and b.model.disk_cache.misses == 0
    for x, y in zip(first, second):
        assert torch.equal(x, y)

    with open(files[0], "wb") as f:
        f.write(b"torn")
    c = Trainer(cfg_for(concert_data, tmp_path / "c", tune_top_layers=1, cache_dir=cache), log=quiet, progress=False)
    with pytest.warns(UserWarning, match="unusable"):
        encode_all(c)
    assert c.model.disk_cache.rebuilt == 1 and c.model.disk_cache.hits == len(files) - 1
    with torch.no_grad():
        torch.load(files[0], weights_only=True)          # rewritten whole

    with torch.no_grad():
        c.model.encoder.bert.embeddings.word_embeddings.weight.mul_(1.01)
    assert os.path.basename(a.model.disk_cache.dir) != encoder_fingerprint(c.model.encoder)
    frozen = Trainer(cfg_for(concert_data, tmp_path / "d", fix_bert=True, cache_dir=cache), log=quiet, progress=False)
    assert frozen.model.disk_cache.dir != a.model.disk_cache.dir


@pytest.mark.parametrize("freeze", [dict(fix_bert=True), dict(tune_top_layers=1)])
def test_entries_written_under_amp_are_the_float32_ones(concert_data, tmp_path, freeze):
    """The cache is keyed by the frozen weights alone, so what a run with --amp (bf16 autocast)
    writes must be what a float32 run would: every later run reads it back, with or without --amp."""
    def entries(name, amp):
        cache = str(tmp_path / name)
        tr = Trainer(cfg_for(concert_data, tmp_path / name, cache_dir=cache, amp=amp, **freeze), log=quiet,
                     progress=False)
        tr.model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            encode_all(tr)
        files = sorted(glob.glob(os.path.join(cache, "*", "*", "*.pt")))
        return {os.path.basename(f): torch.load(f, weights_only=True) for f in files}

    plain, amp = entries("fp32", False), entries("bf16", True)
    assert plain and plain.keys() == amp.keys()

    def flat(v):
        if isinstance(v, torch.Tensor):
            return [v]
        if isinstance(v, dict):
            return [t for k in sorted(v) for t in flat(v[k])]
        return [t for x in v for t in flat(x)] if isinstance(v, (list, tuple)) else []
    for k in plain:
        a, b = flat(plain[k]), flat(amp[k])
        assert a and len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b)), k


def test_a_faster_mix_learns_in_its_own_group_and_follows_a_resumed_lr(concert_data, tmp_path):
    """--mix_lr_factor: the mix's two parameters, and nothing else, learn at factor x --lr, from
    the first step and after a resume that lowers --lr; with the factor, the mix moves further in
    the same steps than at 1."""
    from text2sql.config import ConfigError, TrainConfig
    cache = str(tmp_path / "cache")
    runs = {}
    for f in (1.0, 30.0):
        tr = Trainer(cfg_for(concert_data, tmp_path / f"f{f:g}", fix_bert=True, cache_dir=cache, bert_layers=2,
                             bert_mix=True, mix_lr_factor=f, epochs=1), log=quiet, progress=False)
        runs[f] = tr
    slow, fast = runs[1.0], runs[30.0]
    assert [g["name"] for g in slow.opt.param_groups] == ["rest"]     # as before the flag
    groups = {g["name"]: g for g in fast.opt.param_groups}
    mix = {id(p) for p in fast.model.layer_mix.parameters()}
    assert {id(p) for p in groups["mix"]["params"]} == mix and len(mix) == 2
    assert not mix & {id(p) for p in groups["rest"]["params"]}
    assert groups["mix"]["lr"] == pytest.approx(30 * fast.cfg.lr)
    moved = {}
    for f, tr in runs.items():
        start = tr.model.layer_mix.logits.detach().clone()
        tr.run()
        moved[f] = (tr.model.layer_mix.logits.detach() - start).abs().max().item()
    assert moved[30.0] > 3 * moved[1.0] > 0
    resumed = Trainer(TrainConfig(resume=fast.run_dir, epochs=2, lr=fast.cfg.lr / 4), log=quiet, progress=False)
    lrs = {g["name"]: g["lr"] for g in resumed.opt.param_groups}
    assert lrs["mix"] == pytest.approx(30 * lrs["rest"]) and lrs["rest"] == pytest.approx(fast.cfg.lr / 4)
    with pytest.raises(ConfigError, match="needs --bert_mix"):
        TrainConfig(mix_lr_factor=10).check()
