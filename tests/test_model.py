"""The parser on a tiny random BERT: masking, gradients, history, decoding, training loop."""
import copy
from dataclasses import replace
import json
import math
import os

import pytest
import torch

from text2sql.attention import Attention, masked_softmax
from text2sql.config import TrainConfig
from text2sql.metrics import Meter, sequence_loss
from text2sql.model import MODULES, module_of
from text2sql.train import NonFiniteError, Trainer, evaluate


def quiet(*a, **k):
    pass


def cfg_for(data, tmp_path, **kw):
    base = dict(data=data, bert="tiny", epochs=1, batch_size=2, decoder_size=64, turn_size=64,
                dropout=0.0, max_turn=3, run_dir=str(tmp_path / "run"), train_eval_size=0, lr=2e-3,
                cache_dir=str(tmp_path / "encoder_cache"),
                lr_bert=5e-4)
    base.update(kw)
    return TrainConfig(**base)


def test_masked_softmax_all_padding_row_is_zero_and_has_finite_grad():
    scores = torch.randn(3, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    w = masked_softmax(scores, mask)
    assert torch.equal(w[1], torch.zeros(5))
    assert torch.allclose(w[0].sum(), torch.tensor(1.0)) and w[0, 2:].eq(0).all()
    w.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_attention_over_all_padding_gives_zero_context():
    att = Attention(4, 6)
    keys = torch.randn(2, 3, 6)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    ctx, w = att(torch.randn(2, 4), keys, mask)
    assert ctx.shape == (2, 6) and torch.equal(ctx[1], torch.zeros(6))
    assert torch.allclose(ctx[0], keys[0, 0])


def _textbook_decoder_forward(dec, turn_state, targets, mem, go):
    """The decoder step as the design states it, with nn.LSTMCell, the Attention modules and the
    fusion over the concatenation, one step at a time: what Decoder.forward must equal."""
    B, L = targets.shape
    state = dec.init_state(turn_state)
    prev_out = turn_state.new_zeros(B, dec.hidden)
    inputs = torch.cat([targets.new_full((B, 1), go), targets[:, :-1]], 1)
    emb = dec.embed(inputs, mem.units)
    outs = []
    for i in range(L):
        x = torch.cat([emb[:, i], prev_out], -1)
        h, c = dec.cell(x, state)
        state = (h, c)
        c_utt, _ = dec.att_utt(h, mem.utt, mem.utt_mask)
        c_db, _ = dec.att_db(h, mem.units, mem.unit_mask)
        c_prev, _ = dec.att_prev(h, mem.prev, mem.prev_mask)
        prev_out = dec.dropout(torch.tanh(dec.fuse(torch.cat([x, h, c_utt, c_db, c_prev], -1))))
        outs.append(prev_out)
        if not dec.input_feeding:              # the next step reads the token alone
            prev_out = torch.zeros_like(prev_out)
    return dec.scores(torch.stack(outs, 1), mem)


@pytest.mark.parametrize("input_feeding", [True, False], ids=["input_feeding", "parallel"])
def test_decoder_step_with_products_hoisted_equals_the_textbook_step(input_feeding):
    """Teacher forcing (step by step with hoisted products, or without input feeding in one pass)
    equals the textbook step, outputs and gradients, and decoding's one-step path equals both."""
    from text2sql.decoder import Decoder, DecoderMemory
    torch.manual_seed(0)
    H, hid, P, K = 12, 10, 8, 7
    dec = Decoder(H, hid, n_keywords=K, state_size=6, prev_size=P, input_feeding=input_feeding).double()
    B, W, U, Pn, L = 3, 5, 4, 6, 5
    mask = lambda n, lens: torch.arange(n)[None] < torch.tensor(lens)[:, None]
    rand = lambda *shape: torch.randn(*shape, dtype=torch.double, requires_grad=True)
    mem = DecoderMemory(utt=rand(B, W, H), utt_mask=mask(W, [5, 2, 0]), units=rand(B, U, H),
                        unit_mask=mask(U, [4, 3, 4]), prev=rand(B, Pn, P), prev_mask=mask(Pn, [0, 6, 3]),
                        prev_ids=torch.randint(0, K + U, (B, Pn)))
    inputs = [mem.utt, mem.units, mem.prev, *dec.parameters()]
    names = ["utt", "units", "prev"] + [n for n, _ in dec.named_parameters()]
    turn_state = torch.randn(B, 6, dtype=torch.double)
    targets = torch.randint(0, K + U, (B, L))
    got = dec(turn_state, targets, mem, go=1)
    want = _textbook_decoder_forward(dec, turn_state, targets, mem, go=1)
    noise = torch.randn_like(got)            # one random direction for both backward passes
    grads = torch.autograd.grad((got.exp() * noise).sum(), inputs)
    want_grads = torch.autograd.grad((want.exp() * noise).sum(), inputs)
    assert torch.allclose(got, want, atol=1e-10)
    for name, g, w in zip(names, grads, want_grads):   # the memory's too: they reach the encoder side
        assert torch.allclose(g, w, atol=1e-10), name
        if input_feeding or name not in ("cell.weight_ih", "fuse.weight"):
            assert g.abs().sum() > 0, name
    if not input_feeding:      # the previous output's columns read zeros: no gradient, and no effect
        assert grads[names.index("cell.weight_ih")][:, H:].abs().sum() == 0
        assert grads[names.index("cell.weight_ih")][:, :H].abs().sum() > 0
    # decoding's one-step path gives the teacher-forced log-probs step by step
    prepared, state = dec.prepare(mem), dec.init_state(turn_state)
    prev_out = turn_state.new_zeros(B, hid)
    shifted = torch.cat([torch.ones(B, 1, dtype=torch.long), targets[:, :-1]], 1)
    for i in range(L):
        state, prev_out, logp = dec.step(state, dec.embed(shifted[:, i:i + 1], mem.units)[:, 0], prev_out, prepared)
        assert torch.allclose(logp, got[:, i], atol=1e-10)
    # a memory prepared with gradients off has no deferred sums to receive its steps' gradients:
    # differentiating through it must fail, not leave the memory's and weights' gradients out
    with torch.no_grad():
        frozen = dec.prepare(mem)
    _, _, logp = dec.step(dec.init_state(turn_state), dec.embed(shifted[:, :1], mem.units)[:, 0],
                          turn_state.new_zeros(B, hid), frozen)
    with pytest.raises(RuntimeError, match="gradients off"):
        logp.sum().backward()


def test_teacher_forcing_skips_the_steps_past_each_rows_length_with_the_same_numbers():
    """Given each target's length, teacher forcing runs the rows longest first and drops each
    row once its target has ended: on the real positions, outputs and every gradient (weights and
    memory) equal the textbook step's over the full padded grid; the padded positions are zeros'
    scores and pass no gradient."""
    from text2sql.decoder import Decoder, DecoderMemory
    torch.manual_seed(1)
    H, hid, P, K = 12, 10, 8, 7
    dec = Decoder(H, hid, n_keywords=K, state_size=6, prev_size=P).double()
    B, W, U, Pn, L = 5, 5, 4, 6, 7
    lengths = [3, 7, 1, 3, 5]                        # unsorted, with a tie and a full-length row
    mask = lambda n, lens: torch.arange(n)[None] < torch.tensor(lens)[:, None]
    rand = lambda *shape: torch.randn(*shape, dtype=torch.double, requires_grad=True)
    mem = DecoderMemory(utt=rand(B, W, H), utt_mask=mask(W, [5, 2, 0, 4, 5]), units=rand(B, U, H),
                        unit_mask=mask(U, [4, 3, 4, 2, 4]), prev=rand(B, Pn, P),
                        prev_mask=mask(Pn, [0, 6, 3, 1, 0]), prev_ids=torch.randint(0, K + U, (B, Pn)))
    inputs = [mem.utt, mem.units, mem.prev, *dec.parameters()]
    names = ["utt", "units", "prev"] + [n for n, _ in dec.named_parameters()]
    turn_state = torch.randn(B, 6, dtype=torch.double, requires_grad=True)
    targets = torch.randint(0, K + U, (B, L))
    real = mask(L, lengths)                                                  # [B, L]
    got = dec(turn_state, targets, mem, go=1, lengths=lengths)
    want = _textbook_decoder_forward(dec, turn_state, targets, mem, go=1)
    assert torch.allclose(got[real], want[real], atol=1e-10)
    assert torch.allclose(got[~real], dec.scores(torch.zeros(B, L, hid, dtype=torch.double), mem)[~real])
    noise = torch.randn_like(got) * real.unsqueeze(-1)    # a loss that reads the real positions only
    grads = torch.autograd.grad((got.exp() * noise).sum(), inputs + [turn_state])
    want_grads = torch.autograd.grad((want.exp() * noise).sum(), inputs + [turn_state])
    for name, g, w in zip(names + ["turn_state"], grads, want_grads):
        assert torch.allclose(g, w, atol=1e-10), name
        assert g.abs().sum() > 0, name
    # the steps past a row's end are not run: what the padded positions read owes nothing to the
    # recurrence (the utterance, the turn state, the LSTM), where the full grid's would
    recurrent = [mem.utt, turn_state, dec.cell.weight_hh]
    pad_noise = torch.randn_like(got) * (~real).unsqueeze(-1)
    got = dec(turn_state, targets, mem, go=1, lengths=lengths)
    assert all(g.abs().sum() == 0 for g in torch.autograd.grad((got.exp() * pad_noise).sum(), recurrent))
    full = dec(turn_state, targets, mem, go=1)
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad((full.exp() * pad_noise).sum(), recurrent))


def test_empty_target_loss_is_zero_not_nan():
    logp = torch.log_softmax(torch.randn(2, 4, 7), -1)
    targets = torch.zeros(2, 4, dtype=torch.long)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    for weighting in ("sum", "per_step"):
        loss, kw, db = sequence_loss(logp, targets, mask, 5, weighting, 0)
        assert float(loss) == 0.0 and float(kw) == 0.0 and float(db) == 0.0
    m = Meter(5)
    m.add(logp, targets, mask)
    assert m.summary()["turns"] == 0 and m.summary()["token_acc"] == 0.0


def test_label_smoothing_spreads_over_the_outputs_the_step_could_choose():
    from text2sql.decoder import NEG
    torch.manual_seed(0)
    K = 3                                             # 3 keywords, then 4 unit slots
    logits = torch.randn(2, 3, 7)
    logits[0, :, 5:] = NEG                            # interaction 0's schema has 2 units, 1 has 4
    logp = torch.log_softmax(logits, -1)
    targets = torch.tensor([[0, 4, 2], [6, 1, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    eps = 0.2
    for weighting, denom in (("sum", 2.0), ("per_step", 5.0)):
        plain = sequence_loss(logp, targets, mask, K, weighting, 2)
        smooth = sequence_loss(logp, targets, mask, K, weighting, 2, smoothing=eps)
        kw_sum = db_sum = 0.0
        for b in range(2):
            n_ok = 5 if b == 0 else 7
            for t in range(3):
                if not mask[b, t]:
                    continue
                uniform = -sum(float(logp[b, t, j]) for j in range(n_ok)) / n_ok
                term = (1 - eps) * -float(logp[b, t, targets[b, t]]) + eps * uniform
                if targets[b, t] < K:
                    kw_sum += term
                else:
                    db_sum += term
        assert abs(float(smooth[1]) - kw_sum / denom) < 1e-5 and abs(float(smooth[2]) - db_sum / denom) < 1e-5
        assert abs(float(smooth[0]) - (kw_sum + db_sum) / denom) < 1e-5
        assert float(smooth[0]) < 100 and float(smooth[0]) != float(plain[0])   # padding never counted
        assert torch.equal(sequence_loss(logp, targets, mask, K, weighting, 2, smoothing=0.0)[0], plain[0])


def test_label_smoothing_trains_and_refuses_a_share_out_of_range(concert_data, tmp_path):
    losses = {}
    for eps in (0.0, 0.1):
        tr = Trainer(cfg_for(concert_data, tmp_path / f"ls{eps}", label_smoothing=eps), log=quiet, progress=False)
        losses[eps] = tr.train_step(tr.train_ex[:4], Meter(len(tr.vocab)))
        assert math.isfinite(losses[eps])
    # the same weights and batch (seeded): smoothing adds the uniform term, so the first loss moves
    assert losses[0.1] != losses[0.0]
    with pytest.raises(ValueError, match="label_smoothing"):
        Trainer(cfg_for(concert_data, tmp_path / "bad", label_smoothing=1.0), log=quiet, progress=False)


def test_token_accuracy_is_a_mean_of_per_turn_ratios():
    # turn 1: 1 of 1 right; turn 2: 1 of 3 right -> EditSQL's 66.7, pooled 50
    K = 3
    targets = torch.tensor([[0, 0, 0], [0, 1, 2]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    logp = torch.full((2, 3, 5), -10.0)
    logp[:, :, 0] = 0.0                     # always predicts token 0
    m = Meter(K)
    m.add(logp, targets, mask)
    s = m.summary()
    assert abs(s["token_acc"] - 100 * (1 + 1 / 3) / 2) < 1e-9
    assert abs(s["token_acc_pooled"] - 50.0) < 1e-9
    assert s["string_acc"] == 50.0


@pytest.mark.parametrize("extra", [{}, dict(bert_layers=2, bert_mix=True), dict(no_input_feeding=True)],
                         ids=["mean", "scalar_mix", "no_input_feeding"])
def test_shapes_and_every_module_gets_gradient(concert_data, tmp_path, extra):
    tr = Trainer(cfg_for(concert_data, tmp_path, **extra), log=quiet, progress=False)
    model = tr.model
    batch = tr.train_ex[:2]
    out = model(batch)
    Nt = sum(len(e) for e in batch)
    L = max(len(t) for e in batch for t in e.targets)
    U = max(len(u) for u in [e.unit_texts for e in batch])
    assert out.logp.shape == (Nt, L, len(tr.vocab) + U)
    assert torch.isfinite(out.logp).all()
    assert torch.allclose(out.logp.exp().sum(-1), torch.ones(Nt, L), atol=1e-4)
    from text2sql.metrics import Meter
    tr.train_step(batch, Meter(len(tr.vocab)))
    got = {m: 0.0 for m in MODULES}
    for n, p in model.named_parameters():
        if p.grad is not None:
            got[module_of(n)] += float(p.grad.abs().sum())
    assert all(v > 0 for v in got.values()), got
    # and the encoder really is BERT, learning
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.bert.parameters())
    if extra.get("bert_mix"):        # through the mix, whose weights learn too
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.layer_mix.parameters())


def test_utterance_rnn_learns_over_a_frozen_encoder_and_changes_what_the_decoder_reads(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, utterance_rnn=True, fix_bert=True, joint_layers=1),
                 log=quiet, progress=False)
    model = tr.model
    batch = tr.train_ex[:2]
    ctx = model.contextualise(batch)
    # the layer is residual: switched off, the decoder's tokens are the ones before it
    rnn, model.utt_rnn = model.utt_rnn, None
    plain = model.contextualise(batch)
    model.utt_rnn = rnn
    m = ctx["utt_mask"]
    assert not torch.allclose(ctx["utt"][m], plain["utt"][m], atol=1e-4)
    assert torch.equal(ctx["utt"][~m], torch.zeros_like(ctx["utt"][~m]))      # padding stays zero
    tr.train_step(batch, Meter(len(tr.vocab)))
    # both trainable layers over the frozen encoder learn: the BiLSTM and the joint layer
    grads = [p.grad for p in list(model.utt_rnn.parameters()) + list(model.joint.parameters())]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(module_of(n) == "attention" for n, _ in model.named_parameters()
               if n.startswith(("utt_rnn", "joint")))


def test_previous_utterances_lay_earlier_turns_words_beside_this_turns(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, previous_utterances=2, max_turn=3, fix_bert=True),
                 log=quiet, progress=False)
    model = tr.model.eval()
    batch = [ex for ex in tr.train_ex if len(ex) >= 3][:2]
    with torch.no_grad():
        ctx = model.contextualise(batch)
        model.utt_distance, dist = None, model.utt_distance
        plain = model.contextualise(batch)                  # this turn's tokens alone
        model.utt_distance = dist
    W = plain["utt"].shape[1]
    assert ctx["utt"].shape[1] == 3 * W
    e = dist.weight
    for t in range(3):                                      # the first interaction's turns
        blocks = ctx["utt"][t].view(3, W, -1)
        masks = ctx["utt_mask"][t].view(3, W)
        for d in range(3):
            if t - d < 0:                                   # before turn 1: nothing to read
                assert not masks[d].any() and not blocks[d].any()
                continue
            m = plain["utt_mask"][t - d]
            assert torch.equal(masks[d], m)
            assert torch.allclose(blocks[d][m], plain["utt"][t - d][m] + e[d], atol=1e-6)
    # trained, the distance embedding gets gradient; --max_turn 1 leaves no earlier turn to read
    model.train()
    tr.train_step(batch, Meter(len(tr.vocab)))
    assert dist.weight.grad is not None and dist.weight.grad[1].abs().sum() > 0
    model.max_turn = 1
    assert model.contextualise(batch)["utt"].shape[1] == W


def test_previous_tables_mark_the_units_of_the_tables_the_previous_query_used(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, previous_tables=True, fix_bert=True), log=quiet, progress=False)
    model, vocab = tr.model, tr.vocab
    K = len(vocab)
    # the fourth interaction: "Which singers sang in a concert?" reads singer and singer_in_concert
    ex = tr.train_ex[3]
    schema_units = [u for u in tr.schemas["concerts"].units]
    tables = [schema_units[j - K].split(".")[0] for j in ex.targets[0] if j >= K]
    assert set(tables) == {"singer", "singer_in_concert"}
    ctx = model.contextualise([ex])
    flags = model.previous_table_flags(ctx["unit_tables"], model.gold_previous([ex]))      # [2, U]
    assert not flags[0].any()                                  # turn 1 has no previous query
    want = [float(u.split(".")[0] in set(tables)) for u in schema_units]
    assert flags[1].tolist() == want
    # the marked units are what the decoder reads and points at; the others are as before
    mem = model.memory(ctx, model.gold_previous([ex]))
    on = flags[1].bool()
    assert torch.allclose(mem.units[1][on], ctx["units"][1][on] + model.prev_table.detach(), atol=1e-6)
    assert torch.equal(mem.units[1][~on], ctx["units"][1][~on])
    assert torch.equal(mem.units[0], ctx["units"][0])
    # it learns, with the encoder frozen, and decoding (predicted previous queries) runs through it
    tr.train_step(tr.train_ex[:2], Meter(len(vocab)))
    assert model.prev_table.grad is not None and model.prev_table.grad.abs().sum() > 0
    assert module_of("prev_table") == "output"
    model.eval()
    preds = model.predict(tr.train_ex[:3], beam=2, constrained=True, max_len=20)
    assert [len(p) for p in preds] == [len(e) for e in tr.train_ex[:3]]


def test_unit_types_add_each_units_kind_and_key_role(concert_data, concert_schema, tmp_path):
    from text2sql.schema import UNIT_KINDS
    kinds = concert_schema.unit_kinds()
    unit = dict(zip(concert_schema.units, kinds))
    assert unit["singer"] == 4 * UNIT_KINDS.index("table")
    assert unit["singer.*"] == 4 * UNIT_KINDS.index("star")
    assert unit["singer.name"] == 4 * UNIT_KINDS.index("text")
    assert unit["singer.age"] == 4 * UNIT_KINDS.index("number")
    assert unit["singer.singer_id"] == 4 * UNIT_KINDS.index("number") + 2 + 1      # primary, referenced
    assert unit["stadium.capacity"] == 4 * UNIT_KINDS.index("number")
    assert unit["concert.stadium_id"] == 4 * UNIT_KINDS.index("number") + 1        # foreign only
    assert unit["concert.year"] == 4 * UNIT_KINDS.index("text")
    tr = Trainer(cfg_for(concert_data, tmp_path, unit_types=True, fix_bert=True), log=quiet, progress=False)
    model = tr.model
    batch = tr.train_ex[:2]
    assert batch[0].unit_kinds == kinds
    with torch.no_grad():
        typed = model.contextualise(batch)
        emb, model.unit_type = model.unit_type, None
        plain = model.contextualise(batch)
        model.unit_type = emb
    assert not torch.allclose(typed["units"], plain["units"], atol=1e-4)
    tr.train_step(batch, Meter(len(tr.vocab)))
    g = model.unit_type.weight.grad
    assert g is not None and g[sorted(set(kinds))].abs().sum(1).gt(0).all()
    unused = sorted(set(range(g.shape[0])) - set(kinds))
    assert g[unused].abs().sum() == 0
    assert module_of("unit_type.weight") == "attention"


def test_query_tables_mark_the_query_so_far_alike_teacher_forced_and_step_by_step(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, query_tables=True, remove_from=True, fix_bert=True),
                 log=quiet, progress=False)
    model, K = tr.model.eval(), len(tr.vocab)
    unit_table = tr.schemas["concerts"].unit_table
    batch = tr.train_ex[2:4]                 # stadium questions, then a singer-concert join
    dec = model.decoder
    with torch.no_grad():
        out = model(batch)
        ctx = model.contextualise(batch)
        mem = model.memory(ctx, model.gold_previous(batch))
        flags = dec.query_table_flags(out.targets, out.mask, mem.unit_tables)        # [Nt, L, U]
        for n, tgt in enumerate(t for ex in batch for t in ex.targets):
            for i in range(len(tgt)):
                used = {unit_table[j - K] for j in tgt[:i] if j >= K}
                want = [float(unit_table[u] in used) for u in range(len(unit_table))]
                assert flags[n, i, :len(want)].tolist() == want
        assert flags[:, -1].sum() > 0 and flags[:, 0].sum() == 0
        # decoding builds the same marks one token at a time: fed the gold tokens, each step's
        # log-probabilities are the teacher-forced ones
        state = dec.init_state(ctx["state"])
        prev_out = ctx["state"].new_zeros(ctx["state"].shape[0], dec.hidden)
        tok = torch.full((ctx["state"].shape[0],), tr.vocab.go)
        f = mem.units.new_zeros(mem.units.shape[:2])
        for i in range(out.targets.shape[1]):
            emb = dec.embed(tok.unsqueeze(1), mem.units)[:, 0]
            state, prev_out, logp = dec.step(state, emb, prev_out, mem, f)
            m = out.mask[:, i]
            assert torch.allclose(logp[m], out.logp[m, i], atol=1e-5)
            tok = out.targets[:, i]
            f = dec.add_query_tables(f, tok, mem.unit_tables)
        # the bonus changes the scores of the marked units only
        plain = dec.scores(prev_out, mem, torch.zeros_like(f))
        marked = dec.scores(prev_out, mem, f)
        on = torch.cat([torch.zeros(f.shape[0], K, dtype=torch.bool), f.bool()], 1)          # [Nt, K + U]
        valid = torch.cat([torch.ones_like(on[:, :K]), mem.unit_mask], 1)
        diff = marked - plain       # the normaliser's change everywhere, plus the bonus where marked
        for n in range(diff.shape[0]):
            rest = diff[n][valid[n] & ~on[n]]
            assert torch.allclose(rest, rest[0].expand_as(rest), atol=1e-5)
            if on[n].any():
                bonus = diff[n][on[n]] - rest[0]
                assert torch.allclose(bonus, bonus[0].expand_as(bonus), atol=1e-5) and bonus[0].abs() > 1e-4
    model.train()
    tr.train_step(batch, Meter(K))
    assert dec.query_table.grad is not None and dec.query_table.grad.abs().sum() > 0
    model.eval()
    for beam in (1, 3):
        preds = model.predict(batch, beam=beam, constrained=True, max_len=20)
        assert [len(p) for p in preds] == [len(e) for e in batch]


def test_gradient_of_a_late_turn_reaches_the_first_turn(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path), log=quiet, progress=False)
    model = tr.model
    ex = [tr.train_ex[0]]                      # three turns
    saved = {}

    def keep(module, inputs, output):
        output.retain_grad()
        saved["s"] = output
    h = model.summary.register_forward_hook(keep)
    out = model(ex)
    h.remove()
    # loss of the last turn only
    nll = -out.logp[2].gather(-1, out.targets[2].unsqueeze(-1)).squeeze(-1)[out.mask[2]].sum()
    nll.backward()
    g = saved["s"].grad                        # rows: pre-turn, turn 1, turn 2, turn 3
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0   # the turn state was not detached


def test_max_turn_changes_the_computation(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, max_turn=3), log=quiet, progress=False)
    model = tr.model.eval()
    ex = [tr.train_ex[0]]
    with torch.no_grad():
        three = model(ex).logp
        model.max_turn = 1
        one = model(ex).logp
    # the first turn sees only the pre-turn either way; later turns see different histories
    assert torch.allclose(three[0], one[0], atol=1e-6)
    assert not torch.allclose(three[1], one[1], atol=1e-4)
    assert not torch.allclose(three[2], one[2], atol=1e-4)


def test_sample_previous_feeds_the_models_own_prediction_of_the_turn_before(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, epochs=6), log=quiet, progress=False)
    tr.run()
    model, exs = tr.model, tr.train_ex
    gold = model.gold_previous(exs)
    model.eval()
    want = model.predict(exs, use_gold_previous=True)          # each turn against its gold previous
    model.train()                                              # dropout is 0: the same computation
    ctx = model.contextualise(exs)
    assert model.sampled_previous(exs, ctx) == gold            # off by default
    model.sample_previous = 1.0
    got = model.sampled_previous(exs, ctx)
    cap = max(len(ex.targets[t]) for ex in exs for t in range(len(ex) - 1)) + 10   # its decoding's bound
    i, differ = 0, 0
    for ex, ps in zip(exs, want):
        assert got[i] == []                                    # a first turn has no previous query
        for t in range(1, len(ex)):
            assert got[i + t] == ps[t - 1][:cap]
            differ += got[i + t] != gold[i + t]
        i += len(ex)
    assert differ > 0                                          # some predictions are wrong ones
    model.eval()                                               # never outside training
    assert model.sampled_previous(exs, model.contextualise(exs)) == gold
    # a training step with half the follow-ups sampled learns, and the draws follow the seed
    model.train()
    model.sample_previous = 0.5
    torch.manual_seed(3)
    a = model.sampled_previous(exs, ctx)
    torch.manual_seed(3)
    assert model.sampled_previous(exs, ctx) == a
    before = [p.detach().clone() for p in model.decoder.parameters()]
    loss = tr.train_step(exs[:2], Meter(len(tr.vocab)))
    assert loss == loss and abs(loss) < float("inf")
    assert any(not torch.equal(b, p) for b, p in zip(before, model.decoder.parameters()))
    assert model.decoder.training                              # sampling gave training mode back


def test_sample_chain_feeds_predictions_made_from_predictions_as_decoding_does(concert_data, tmp_path):
    """With --sample_chain and P = 1, every follow-up reads what decoding with its own previous
    queries writes for the turn before: a chain, not one turn deep."""
    tr = Trainer(cfg_for(concert_data, tmp_path, epochs=6, sample_previous=1.0, sample_chain=True),
                 log=quiet, progress=False)
    tr.run()
    model, exs = tr.model, tr.train_ex
    model.eval()
    chain = model.predict(exs)                                 # predicted previous queries
    model.train()
    ctx = model.contextualise(exs)
    seen, memory = [], model.memory

    def spy(ctx, prevs, rows=None):                            # what each prediction is made from
        if rows is not None:
            seen.extend(zip(rows.tolist(), prevs))
        return memory(ctx, prevs, rows)
    model.memory = spy
    got = model.sampled_previous(exs, ctx)
    gold = model.gold_previous(exs)
    # every turn is predicted from the previous query it reads itself, often a prediction
    assert seen and all(prev == got[r] for r, prev in seen)
    assert sum(prev != gold[r] for r, prev in seen) > 0
    seen.clear()
    model.sample_chain = False                                 # one turn deep: always from the gold
    torch.manual_seed(0)
    model.sampled_previous(exs, ctx)
    assert seen and all(prev == gold[r] for r, prev in seen)
    model.sample_chain = True
    i, checked = 0, 0
    for ex, ps in zip(exs, chain):
        for t in range(1, len(ex)):
            g, p = got[i + t], ps[t - 1]
            assert len(g) > 0 and g == p[:len(g)]
            if len(g) < len(p):   # sampling caps a runaway query sooner: the chain reads another input
                break
            checked += 1
        i += len(ex)
    assert checked > 0
    with pytest.raises(ValueError, match="--sample_chain needs --sample_previous"):
        Trainer(cfg_for(concert_data, tmp_path / "b", sample_chain=True), log=quiet, progress=False)


@pytest.mark.parametrize("extra", [{}, dict(no_input_feeding=True)], ids=["input_feeding", "no_input_feeding"])
def test_teacher_forced_string_accuracy_equals_greedy_exact_match(concert_data, tmp_path, extra):
    tr = Trainer(cfg_for(concert_data, tmp_path, epochs=12, **extra), log=quiet, progress=False)
    tr.run()
    model = tr.model.eval()
    with torch.no_grad():
        out = model(tr.train_ex)
        preds = model.predict(tr.train_ex, use_gold_previous=True)
    right = ((out.logp.argmax(-1) == out.targets) | ~out.mask).all(-1).tolist()
    greedy = [p == t[:-1] for e, ps in zip(tr.train_ex, preds) for p, t in zip(ps, e.targets)]
    assert right == greedy
    assert 0 < sum(right) < len(right)   # checked on a model that gets some turns, not all
    s = evaluate(model, tr.train_ex, tr.cfg)
    assert abs(s["string_acc"] - 100.0 * sum(greedy) / len(greedy)) < 1e-9


def test_overfits_tiny_data_with_tiny_bert(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, epochs=60, batch_size=1, tiny_dataset=4, fix_bert=True),
                 log=quiet, progress=False)
    tr.run()
    rows = [json.loads(l) for l in open(os.path.join(tr.run_dir, "metrics.jsonl"))]
    train = [r for r in rows if r["split"] == "train"]
    assert train[0]["string_acc"] < 50.0
    assert max(r["string_acc"] for r in train) == 100.0, train[-1]
    assert set(rows[0]) >= {"epoch", "step", "split", "loss", "keyword_loss", "db_loss", "token_acc",
                            "string_acc", "keyword_acc", "db_acc", "turns", "seconds"}
    for f in ("config.json", "vocab.json", "best.pt", "last.pt"):
        assert os.path.exists(os.path.join(tr.run_dir, f))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tr.run_dir))


def _uninterrupted_and_resumed(data, tmp_path, **kw):
    """A 3-epoch run, and a 1-epoch run with the same flags resumed to 3 epochs."""
    full = Trainer(cfg_for(data, tmp_path / "a", epochs=3, shuffle=True, **kw), log=quiet, progress=False).run()
    half = Trainer(cfg_for(data, tmp_path / "b", epochs=1, shuffle=True, **kw), log=quiet, progress=False).run()
    return full, Trainer(TrainConfig(resume=half.run_dir, epochs=3), log=quiet, progress=False).run()


def test_resume_equals_uninterrupted_run(concert_data, tmp_path):
    full, resumed = _uninterrupted_and_resumed(concert_data, tmp_path, dropout=0.2)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [json.loads(l) for l in open(os.path.join(full.run_dir, "metrics.jsonl"))]
    lb = [json.loads(l) for l in open(os.path.join(resumed.run_dir, "metrics.jsonl"))]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(la) == strip(lb)


def test_checkpoints_name_a_frozen_encoder_by_its_digest_and_loading_checks_it(concert_data, tmp_path):
    """A frozen encoder that is --bert's is left out of best.pt and last.pt (only its digest is
    kept; best.pt has no optimiser state), and every way of loading them gives back the trained
    weights: evaluation's load_run, a resume (to the same result as an uninterrupted run) and
    --init_from. Loading over an encoder with other weights is a one-line error naming the file."""
    from text2sql.errors import DataError
    from text2sql.train import init_weights, load_run
    full, resumed = _uninterrupted_and_resumed(concert_data, tmp_path, fix_bert=True, ema=0.9)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    run = resumed.run_dir
    last = torch.load(os.path.join(run, "last.pt"), weights_only=False)
    best = torch.load(os.path.join(run, "best.pt"), weights_only=False)
    encoder_keys = [k for k in full.model.state_dict() if k.startswith("encoder.")]
    for ck in (last, best):
        assert not any(k.startswith("encoder.") for k in ck["model"])
        assert sorted(ck["frozen_encoder"]["keys"]) == sorted(encoder_keys)
    assert "optimizer" in last and "optimizer" not in best and "rng" not in best
    raw, _, _ = load_run(os.path.join(run, "last.pt"), raw=True)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(raw.state_dict()[k], v), k
    # the same weights, saved in full, make a file about twice the size (the encoder is most of it)
    whole = str(tmp_path / "whole.pt")
    torch.save({**last, "model": resumed.model.state_dict()}, whole)
    assert os.path.getsize(whole) > 1.5 * os.path.getsize(os.path.join(run, "last.pt"))

    # an encoder with other weights (the tiny random BERT is drawn from the run's seed)
    other = Trainer(cfg_for(concert_data, tmp_path / "o", fix_bert=True, ema=0.9, seed=1), log=quiet,
                    progress=False)
    with pytest.raises(DataError) as e:
        init_weights(other.model, os.path.join(run, "best.pt"), other.cfg)
    msg = str(e.value)
    assert "\n" not in msg and "best.pt" in msg and "frozen encoder" in msg and "'tiny'" in msg

    # after --init_from a run whose encoder trained, the frozen weights are that run's: kept in full
    tuned = Trainer(cfg_for(concert_data, tmp_path / "t", epochs=1, init_from=run, lr_bert=1e-3),
                    log=quiet, progress=False).run()
    assert tuned.frozen is None        # nothing is frozen there
    frozen = Trainer(cfg_for(concert_data, tmp_path / "f", epochs=1, init_from=tuned.run_dir + "/last.pt",
                             fix_bert=True, ema=0.9), log=quiet, progress=False).run()
    assert frozen.frozen is None
    ck = torch.load(os.path.join(frozen.run_dir, "last.pt"), weights_only=False)
    assert "frozen_encoder" not in ck and set(encoder_keys) <= set(ck["model"])
    back, _, _ = load_run(frozen.run_dir + "/last.pt", raw=True)
    for k in encoder_keys:
        assert torch.equal(back.state_dict()[k], tuned.model.state_dict()[k]), k
    assert not all(torch.equal(back.state_dict()[k], full.model.state_dict()[k]) for k in encoder_keys)


def test_slim_checkpoints_script_rewrites_an_older_runs_checkpoints(concert_data, tmp_path):
    """scripts/slim_checkpoints.py on checkpoints in the form saved before (encoder weights in full,
    optimiser state in best.pt too): rewritten in the current form, loading to the same weights;
    a second pass and a run whose encoder trained are left as they are."""
    import subprocess
    import sys
    from text2sql.train import load_run
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tr = Trainer(cfg_for(concert_data, tmp_path / "f", epochs=2, fix_bert=True, ema=0.9), log=quiet,
                 progress=False).run()
    full_model = tr.model.state_dict()
    for name in ("best.pt", "last.pt"):          # as an older version wrote them
        path = os.path.join(tr.run_dir, name)
        ck = torch.load(path, weights_only=False)
        del ck["frozen_encoder"]
        ck["model"] = {**{k: v for k, v in full_model.items() if k.startswith("encoder.")}, **ck["model"]}
        ck.update(optimizer=tr.opt.state_dict(), scheduler=tr.sched.state_dict())
        torch.save(ck, path)
    before = {n: load_run(os.path.join(tr.run_dir, n), raw=True)[0].state_dict() for n in ("best.pt", "last.pt")}
    sizes = {n: os.path.getsize(os.path.join(tr.run_dir, n)) for n in ("best.pt", "last.pt")}
    tuned = Trainer(cfg_for(concert_data, tmp_path / "t", epochs=1), log=quiet, progress=False).run()

    def slim(*runs):
        p = subprocess.run([sys.executable, "scripts/slim_checkpoints.py", *runs], cwd=root,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-1500:]
        return p.stdout
    out = slim(tr.run_dir, tuned.run_dir)
    assert "frozen encoder left out" in out and "optimiser state dropped" in out and "its encoder trained: kept" in out
    for n in ("best.pt", "last.pt"):
        path = os.path.join(tr.run_dir, n)
        ck = torch.load(path, weights_only=False)
        assert "frozen_encoder" in ck and not any(k.startswith("encoder.") for k in ck["model"])
        assert ("optimizer" in ck) == (n == "last.pt")
        assert os.path.getsize(path) < sizes[n] / 1.5
        after = load_run(path, raw=True)[0].state_dict()
        for k, v in before[n].items():
            assert torch.equal(after[k], v), (n, k)
    assert "frozen encoder already left out" in slim(tr.run_dir) and "0.0 MB freed" in slim(tr.run_dir)


def test_weight_average_follows_its_formula_and_leaves_frozen_weights_out():
    from text2sql.train import WeightAverage
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    net[1].weight.requires_grad_(False)
    avg = WeightAverage(net, decay=0.9)
    assert "1.weight" not in avg.names and len(avg.shadow) == 3
    expect = net[0].weight.detach().clone()
    for n in range(1, 31):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        avg.update()
        d = min(0.9, (1 + n) / (10 + n))          # the warm-up keeps early averages near the weights
        expect = d * expect + (1 - d) * net[0].weight.detach()
    assert torch.allclose(avg.shadow[0], expect, atol=1e-6)
    assert not torch.allclose(avg.shadow[0], net[0].weight)
    raw = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(KeyError):
        with avg.swapped_in():
            assert torch.equal(net[0].weight, avg.shadow[0]) and torch.equal(net[1].weight, raw[2])
            raise KeyError("the weights come back even when the block fails")
    assert all(torch.equal(p, r) for p, r in zip(net.parameters(), raw))


def test_ema_validates_decodes_and_checkpoints_the_average_and_logs_the_raw_weights(concert_data, tmp_path):
    from text2sql.train import load_run
    tr = Trainer(cfg_for(concert_data, tmp_path, epochs=3, ema=0.9), log=quiet, progress=False).run()
    rows = [json.loads(l) for l in open(os.path.join(tr.run_dir, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows if r["split"] == "valid"] == [1, 2, 3]
    assert [r["epoch"] for r in rows if r["split"] == "valid_raw"] == [1, 2, 3]
    averaged, _, _ = load_run(tr.run_dir, which="last.pt")
    raw, _, _ = load_run(tr.run_dir, which="last.pt", raw=True)
    assert (averaged.checkpoint["weights"], raw.checkpoint["weights"]) == ("averaged", "raw")
    names = dict(tr.model.named_parameters())
    for n, s in zip(tr.average.names, tr.average.shadow):
        assert torch.equal(dict(averaged.named_parameters())[n], s), n
        assert torch.equal(dict(raw.named_parameters())[n], names[n]), n
    assert any(not torch.equal(s, names[n]) for n, s in zip(tr.average.names, tr.average.shadow))
    # the logged figures are of those weights: valid of the average, valid_raw of the raw ones
    last = {r["split"]: r for r in rows if r["epoch"] == 3}
    for model, split in ((averaged, "valid"), (raw, "valid_raw")):
        got = evaluate(model, tr.valid_ex, tr.cfg)
        assert got["loss"] == pytest.approx(last[split]["loss"], rel=1e-5), split
        assert got["token_acc"] == pytest.approx(last[split]["token_acc"]), split
    assert last["valid"]["loss"] != last["valid_raw"]["loss"]
    # best.pt is chosen by the average's figures
    best_epoch = max((r for r in rows if r["split"] == "valid"), key=lambda r: (r["token_acc"], -r["epoch"]))["epoch"]
    assert load_run(tr.run_dir)[0].checkpoint["epoch"] == best_epoch


def test_ema_resumes_exactly_and_can_be_switched_on_at_a_resume(concert_data, tmp_path):
    from text2sql.train import load_run
    full, resumed = _uninterrupted_and_resumed(concert_data, tmp_path, ema=0.9)
    assert resumed.average.updates == full.average.updates
    for a, b in zip(full.average.shadow, resumed.average.shadow):
        assert torch.equal(a, b)
    # a checkpoint whose average lacks a weight is a one-line error naming the file, not a KeyError
    from text2sql.errors import DataError
    for name in ("last.pt", "best.pt"):
        path = os.path.join(full.run_dir, name)
        ck = torch.load(path, map_location="cpu", weights_only=False)
        ck["ema"]["weights"].pop(full.average.names[0])
        torch.save(ck, path)
    with pytest.raises(DataError, match="last.pt: the checkpoint's weight average lacks 1"):
        Trainer(TrainConfig(resume=full.run_dir, epochs=4), log=quiet, progress=False)
    with pytest.raises(DataError, match="best.pt: the checkpoint's weight average lacks 1"):
        load_run(full.run_dir)
    # a run trained without it: the average starts at the resume, and the old best no longer counts
    plain = Trainer(cfg_for(concert_data, tmp_path / "c", epochs=1), log=quiet, progress=False).run()
    on = Trainer(_train_args(["--resume", plain.run_dir, "--epochs", "2", "--ema", "0.9"]), log=quiet,
                 progress=False)
    assert on.average is not None and on.average.updates == 0 and on.best == -1.0
    on.run()
    assert load_run(plain.run_dir, which="last.pt")[0].checkpoint["weights"] == "averaged"
    rows = [json.loads(l) for l in open(os.path.join(plain.run_dir, "resumes.jsonl"))]
    assert rows[-1]["changed"]["ema"] == [0.0, 0.9]


def _train_args(argv):
    import argparse
    from text2sql.config import add_train_command, config_from_args
    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers())
    return config_from_args(parser.parse_args(["train"] + argv))


def test_resume_keeps_saved_values_of_flags_not_given(concert_data, tmp_path):
    """`train --resume DIR` alone continues the run as it was: not with the defaults (30 epochs,
    lr 1e-3) of the flags left out."""
    half = Trainer(cfg_for(concert_data, tmp_path / "b", epochs=1), log=quiet, progress=False).run()
    cfg = _train_args(["--resume", half.run_dir])
    assert cfg.given == {"resume"} and cfg.epochs == 30
    tr = Trainer(cfg, log=quiet, progress=False)
    assert (tr.cfg.epochs, tr.cfg.lr) == (1, 2e-3)
    assert not os.path.exists(os.path.join(half.run_dir, "resumes.jsonl"))


def test_resume_with_a_lower_learning_rate_uses_and_records_it(concert_data, tmp_path):
    half = Trainer(cfg_for(concert_data, tmp_path / "b", epochs=1), log=quiet, progress=False).run()
    tr = Trainer(_train_args(["--resume", half.run_dir, "--epochs", "2", "--lr", "5e-4"]), log=quiet,
                 progress=False)
    assert [g["lr"] for g in tr.opt.param_groups if g["name"] == "rest"] == [5e-4]
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.run()
    assert tr.epoch == 2 and any(not torch.equal(before[n], p) for n, p in tr.model.named_parameters())
    rows = [json.loads(l) for l in open(os.path.join(half.run_dir, "resumes.jsonl"))]
    assert rows == [{"after_epoch": 1, "step": rows[0]["step"],
                     "changed": {"epochs": [1, 2], "lr": [2e-3, 5e-4]}}]
    assert TrainConfig.load(half.run_dir).lr == 5e-4


def test_non_finite_guard_names_the_module(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path), log=quiet, progress=False)
    with torch.no_grad():
        tr.model.decoder.fuse.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError) as e:
        tr.run()
    msg = str(e.value)
    assert "non-finite loss" in msg and "decoder" in msg and "debug checkpoint" in msg
    path = msg.rsplit("debug checkpoint: ", 1)[1]
    assert os.path.exists(path) and "message" in torch.load(path, weights_only=False)


def test_non_finite_steps_can_be_skipped_and_counted(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, skip_nonfinite=True), log=quiet, progress=False)
    before = copy.deepcopy(tr.model.history.weight.detach())
    with torch.no_grad():
        tr.model.decoder.fuse.weight[0, 0] = float("nan")
    tr.run()
    assert tr.skipped == len(tr.train_ex) // 2 and tr.step == 0
    assert torch.equal(before, tr.model.history.weight.detach())


def test_cli_train_exit_code_on_nan_guard_is_not_a_traceback(concert_data, tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    p = subprocess.run([sys.executable, "-m", "text2sql", "train", "--data", concert_data, "--bert", "tiny",
                        "--epochs", "1", "--lr", "1e30", "--clip", "0", "--run_dir", str(tmp_path / "r")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    # a learning rate of 1e30 without clipping diverges at the second step
    assert "Traceback" not in p.stderr
    assert p.returncode == 3, p.stderr[-500:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite loss") and "debug checkpoint" in last


def test_cli_flags_that_cannot_go_together_are_one_line_before_anything_is_written(concert_data, tmp_path,
                                                                                  capsys):
    from text2sql.__main__ import main
    cases = ((["--sample_chain"], "--sample_chain needs --sample_previous"),
             (["--label_smoothing", "1.5"], "--label_smoothing must be in [0, 1)"),
             (["--ema", "1"], "--ema must be in [0, 1)"),
             (["--tune_top_layers", "1", "--fix_bert"], "--tune_top_layers 1 cannot go with --fix_bert"),
             (["--bert_mix"], "--bert_mix needs --bert_layers N >= 2"),
             (["--bert_mix", "--bert_layers", "2", "--tune_top_layers", "1"],
              "--bert_mix cannot go with --tune_top_layers"),
             (["--sample_previous", "0.5", "--unbatched"], "--sample_previous is not implemented for --unbatched"))
    for i, (flags, message) in enumerate(cases):
        run = tmp_path / f"r{i}"
        code = main(["train", "--data", concert_data, "--bert", "tiny", "--epochs", "1", "--run_dir", str(run), *flags])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: " + message), lines
        assert not run.exists()                  # no half-made run folder left behind


def test_unit_mask_trains_a_relevance_head_and_masks_when_decoding(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, unit_mask=True), log=quiet, progress=False)
    model = tr.model
    out = model(tr.train_ex[:2])
    assert out.relevance_loss is not None and float(out.relevance_loss.detach()) > 0
    with torch.no_grad():
        model.relevance.bias.fill_(-50.0)          # the head now rejects every unit...
        model.relevance.weight.zero_()
    model.eval()
    ctx = model.contextualise(tr.train_ex[:1])
    mask = model.decoding_mask(ctx)
    assert torch.equal(mask, ctx["unit_mask"])     # ...but never leaves a turn with no unit at all
    with torch.no_grad():
        model.relevance.bias.fill_(0.0)
        model.relevance.weight.zero_()
        model.relevance.weight[0, 0] = 1.0         # keep units whose first feature is positive
    mask = model.decoding_mask(ctx)
    expect = (ctx["units"][..., 0] > 0) & ctx["unit_mask"]
    assert torch.equal(mask, expect) and mask.sum() < ctx["unit_mask"].sum()


def test_key_init_copies_bert_embeddings(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, key_init=True), log=quiet, progress=False)
    enc = tr.model.encoder
    k = tr.vocab.index["select"]
    table = enc.bert.embeddings.word_embeddings.weight
    expect = table[enc.pieces("select")].mean(0)
    assert torch.allclose(tr.model.decoder.keyword_emb.weight[k], expect)
    g = tr.vocab.index["group_by"]
    assert torch.allclose(tr.model.decoder.keyword_emb.weight[g], table[enc.pieces("group by")].mean(0))


def test_remove_from_and_sorted_batches_train(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, remove_from=True, sort_by_turns=True, shuffle=True,
                         epochs=2), log=quiet, progress=False)
    assert [("from" in e.tokens[0]) for e in tr.train_ex] == [False, False, False, True]   # a link table
    # named by no unit keeps its FROM (see sql_tokens)
    assert any("concert.*" in toks for e in tr.train_ex for toks in e.tokens)
    tr.run()
    rows = [json.loads(l) for l in open(os.path.join(tr.run_dir, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows if r["split"] == "valid"] == [1, 2]


def test_db_split_protocol_never_shares_a_database():
    from conftest import shared_path
    from text2sql.train import load_data
    data = os.path.dirname(shared_path("sparc", "dev.json"))
    train, valid, _, _ = load_data(TrainConfig(data=data, protocol="db_split"), log=quiet)
    tdb, vdb = {i.db_id for i in train}, {i.db_id for i in valid}
    assert not tdb & vdb and len(tdb) == len(vdb) == 10
    assert max(tdb) < min(vdb)       # the first 10 in sorted order train
    assert (len(train), sum(len(i) for i in train), len(valid), sum(len(i) for i in valid)) == (225, 696, 197, 507)


def test_tune_top_layers_trains_the_top_layer_over_frozen_states_computed_once(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, epochs=1, tune_top_layers=1), log=quiet, progress=False)
    model = tr.model
    enc = model.encoder
    n = enc.bert.config.num_hidden_layers
    top = {k for k, p in model.named_parameters() if k.startswith(f"encoder.bert.encoder.layer.{n - 1}.")}
    assert {k for k, p in model.named_parameters() if p.requires_grad and k.startswith("encoder.")} == top
    bert_group = [g for g in tr.opt.param_groups if g["name"] == "bert"]
    assert len(bert_group) == 1 and bert_group[0]["lr"] == tr.cfg.lr_bert
    assert {id(p) for p in bert_group[0]["params"]} == {id(p) for k, p in model.named_parameters() if k in top}

    calls = []
    bottom = enc.bottom_states
    enc.bottom_states = lambda passes, dev: calls.append(len(passes)) or bottom(passes, dev)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr.run()
    filled = len(calls)
    assert filled > 0 and len(model._bottom) >= len(tr.train_ex)
    after = model.state_dict()
    moved = {k for k in before if k.startswith("encoder.") and not torch.equal(before[k], after[k])}
    assert moved and moved <= top                     # the top layer learnt; nothing below it moved

    # a second epoch reads every frozen state from memory
    tr.cfg.epochs = 2
    tr.run()
    assert len(calls) == filled
    # validation read the same cached states: evaluating again gives the logged figure
    rows = [json.loads(l) for l in open(os.path.join(tr.run_dir, "metrics.jsonl"))]
    logged = [r for r in rows if r["split"] == "valid"][-1]
    assert logged["epoch"] == 2
    assert evaluate(tr.model, tr.valid_ex, tr.cfg)["token_acc"] == pytest.approx(logged["token_acc"])

    with pytest.raises(ValueError, match="--tune_top_layers 1 cannot go with --fix_bert"):
        Trainer(cfg_for(concert_data, tmp_path / "b", tune_top_layers=1, fix_bert=True), log=quiet, progress=False)


def test_pointer_links_count_name_words_whole_names_and_the_turn_before():
    from text2sql.model import N_POINTER_LINKS, _pointer_links
    units = ["singer", "singer *", "singer . first name", "singer . age", "concert . concert name"]
    now = "show the first names of all singers".split()
    before = "how old is each singer".split()
    f = _pointer_links(now, before, units, 7)
    assert f.shape == (7, N_POINTER_LINKS) and f[5:].abs().sum() == 0          # padding rows
    # [column share, table share, column as a phrase, table as a phrase, the two shares before]
    assert f[0].tolist() == [0, 1, 0, 1, 0, 1] and f[1].tolist() == [0, 1, 0, 1, 0, 1]
    assert f[2].tolist() == [1, 1, 1, 1, 0, 1]
    assert f[3].tolist() == [0, 1, 0, 1, 0, 1]
    assert f[4].tolist() == [0.5, 0, 0, 0, 0, 0]
    # the words of a name in another order are all there, but not as the name
    g = _pointer_links("name the first singer".split(), [], units, 5)
    assert g[2].tolist() == [1, 1, 0, 1, 0, 0]


def test_link_bonus_scores_named_units_alike_teacher_forced_and_step_by_step(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, link_bonus=True, fix_bert=True), log=quiet, progress=False)
    model, K = tr.model, len(tr.vocab)
    dec, batch = model.decoder, tr.train_ex[:3]
    # zero-initialised, so training starts from the model without it; one step moves it
    assert dec.link_gate.weight.abs().sum() == 0
    tr.train_step(batch, Meter(K))
    assert dec.link_gate.weight.grad.abs().sum() > 0 and dec.link_gate.weight.abs().sum() > 0
    assert module_of("decoder.link_gate.weight") == "decoder"
    model.eval()
    with torch.no_grad():
        torch.nn.init.normal_(dec.link_gate.weight)
        out = model(batch)
        ctx = model.contextualise(batch)
        mem = model.memory(ctx, model.gold_previous(batch))
        links = mem.unit_links                                                  # [Nt, U, F]
        assert links.shape[:2] == mem.units.shape[:2] and links[~mem.unit_mask].abs().sum() == 0
        assert links[..., 2].sum() > 0       # some unit is named whole in some turn
        state = dec.init_state(ctx["state"])
        prev_out = ctx["state"].new_zeros(ctx["state"].shape[0], dec.hidden)
        tok = torch.full((ctx["state"].shape[0],), tr.vocab.go)
        for i in range(out.targets.shape[1]):
            emb = dec.embed(tok.unsqueeze(1), mem.units)[:, 0]
            state, prev_out, logp = dec.step(state, emb, prev_out, mem)
            m = out.mask[:, i]
            assert torch.allclose(logp[m], out.logp[m, i], atol=1e-5)
            tok = out.targets[:, i]
        # each unit's logit moves by exactly (W o + b) . f_unit; keywords only by the normaliser
        with_bonus = dec.scores(prev_out, mem)
        plain = dec.scores(prev_out, replace(mem, unit_links=torch.zeros_like(links)))
        diff = with_bonus - plain
        norm = diff[:, :K]
        assert torch.allclose(norm, norm[:, :1].expand_as(norm), atol=1e-5)
        want = torch.einsum("bf,buf->bu", dec.link_gate(prev_out), links)
        valid = mem.unit_mask
        assert torch.allclose((diff[:, K:] - norm[:, :1])[valid], want[valid], atol=1e-4)
        assert want[valid].abs().max() > 1e-3
    for beam in (1, 3):
        preds = model.predict(batch, beam=beam, constrained=True, max_len=20)
        assert [len(p) for p in preds] == [len(e) for e in batch]


def test_singular_meets_the_names_of_columns():
    from text2sql.model import _singular
    for plural, name in [("names", "name"), ("addresses", "address"), ("cities", "city"), ("types", "type"),
                         ("classes", "class"), ("matches", "match"), ("dates", "date"), ("years", "year")]:
        assert _singular(plural) == _singular(name) == name, plural
    assert _singular("status") == "status" and _singular("has") == "has"


def test_init_from_starts_a_second_stage_from_a_runs_averaged_weights(concert_data, tmp_path):
    """--init_from: a run trained with a frozen encoder, continued with the encoder fine-tuned.
    It starts from the weights the first run validated with (its best.pt's average), so its first
    figures are the first run's; then the encoder trains too."""
    from text2sql.encoder_cache import encoder_fingerprint
    from text2sql.errors import ConfigError, DataError
    from text2sql.train import load_run
    model_flags = dict(bert_layers=3, bert_mix=True, utterance_rnn=True, previous_tables=True)
    first = Trainer(cfg_for(concert_data, tmp_path / "a", epochs=3, fix_bert=True, ema=0.9, **model_flags),
                    log=quiet, progress=False).run()
    saved, _, _ = load_run(first.run_dir)             # best.pt, averaged
    rows = [json.loads(l) for l in open(os.path.join(first.run_dir, "metrics.jsonl"))]
    best = [r for r in rows if r["split"] == "valid" and r["epoch"] == saved.checkpoint["epoch"]][0]

    second = Trainer(cfg_for(concert_data, tmp_path / "b", epochs=2, init_from=first.run_dir, lr=1e-3,
                             lr_bert=1e-3, ema=0.9, **model_flags), log=quiet, progress=False)
    for n, p in second.model.state_dict().items():
        assert torch.equal(p, saved.state_dict()[n]), n
    assert second.vocab.tokens == first.vocab.tokens
    got = evaluate(second.model, second.valid_ex, second.cfg)
    assert got["loss"] == pytest.approx(best["loss"], rel=1e-5)
    assert got["token_acc"] == pytest.approx(best["token_acc"])
    # the encoder now trains: its own optimiser group, and its weights move
    assert [g["name"] for g in second.opt.param_groups] == ["rest", "bert"]
    assert second.average.updates == 0 and second.best == -1.0
    bert_before = {n: p.detach().clone() for n, p in second.model.encoder.bert.named_parameters()}
    second.run()
    moved = [n for n, p in second.model.encoder.bert.named_parameters() if not torch.equal(p, bert_before[n])]
    assert len(moved) > len(bert_before) // 2
    assert TrainConfig.load(second.run_dir).init_from == first.run_dir
    # a resume continues from its own last.pt, not from the first run again
    resumed = Trainer(TrainConfig(resume=second.run_dir, epochs=3), log=quiet, progress=False)
    last = torch.load(os.path.join(second.run_dir, "last.pt"), weights_only=False)["model"]
    for n, p in resumed.model.state_dict().items():
        assert torch.equal(p, last[n]), n

    # frozen again from a fine-tuned run: the encoder cache is keyed by the loaded weights
    third = Trainer(cfg_for(concert_data, tmp_path / "c", epochs=1, init_from=second.run_dir + "/last.pt",
                            fix_bert=True, **model_flags), log=quiet, progress=False)
    assert third.model.disk_cache.dir.endswith(encoder_fingerprint(third.model.encoder))
    fresh = Trainer(cfg_for(concert_data, tmp_path / "d", epochs=1, fix_bert=True, **model_flags),
                    log=quiet, progress=False)
    assert third.model.disk_cache.dir != fresh.model.disk_cache.dir

    # training targets with keywords the first run's vocabulary lacks: named, and trained as <unk>
    lines = []
    lit = Trainer(cfg_for(concert_data, tmp_path / "h", init_from=first.run_dir, values="literal", **model_flags),
                  log=lines.append, progress=False)
    warned = [l for l in lines if "not in" in l and "vocabulary" in l]
    assert len(warned) == 1 and "2014" in warned[0] and "30" in warned[0].split(": ")[-1].split()
    assert lit.vocab.unk in lit.train_ex[1].targets[1]

    # a checkpoint that does not fit, a missing run, and --resume together: one-line errors
    with pytest.raises(ConfigError, match=r"does not fit.*--decoder_size 64 there, 32 here"):
        Trainer(cfg_for(concert_data, tmp_path / "e", init_from=first.run_dir, decoder_size=32, **model_flags),
                log=quiet, progress=False)
    with pytest.raises(ConfigError, match=r"does not fit.*--utterance_rnn True there, False here"):
        Trainer(cfg_for(concert_data, tmp_path / "f", init_from=first.run_dir, bert_layers=3, bert_mix=True,
                        previous_tables=True), log=quiet, progress=False)
    with pytest.raises(DataError, match="no best.pt and vocab.json"):
        Trainer(cfg_for(concert_data, tmp_path / "g", init_from=str(tmp_path / "nowhere")), log=quiet,
                progress=False)
    with pytest.raises(ConfigError, match="cannot go with --resume"):
        Trainer(TrainConfig(resume=second.run_dir, init_from=first.run_dir), log=quiet, progress=False)
