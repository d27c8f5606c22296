"""The fast paths compute what the slow ones do: batched == one interaction and one turn at a time,
batched beam search == beam search per turn, bf16 autocast trains, and a 2-process torchrun run
takes the same step as one process."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from text2sql.config import TrainConfig
from text2sql.metrics import Meter
from text2sql.train import Trainer, batches

TINY_DATA = os.path.join(ROOT, "data", "spider_cosql", "tiny")


def quiet(*a, **k):
    pass


def tiny_trainer(tmp_path, **kw):
    base = dict(bert="tiny", epochs=1, batch_size=4, decoder_size=48, turn_size=48, dropout=0.0,
                run_dir=str(tmp_path / "run"), cache_dir="", train_eval_size=4)
    base.update(kw)
    return Trainer(TrainConfig(**base), log=quiet, progress=False)


def real_part(a, b, mask):
    """The log-probs of real steps and real units (both paths give masked units ~ -1e9)."""
    a, b = a[mask], b[mask]
    keep = (a > -1e8) & (b > -1e8)
    assert torch.equal(a > -1e8, b > -1e8)
    return a[keep], b[keep]


@pytest.mark.parametrize("kw", [
    dict(max_turn=1), dict(max_turn=2), dict(max_turn=5), dict(max_turn=3, utterance_rnn=True),
    dict(max_turn=5, utterance_rnn=True, previous_utterances=2), dict(max_turn=2, previous_utterances=3),
    dict(max_turn=3, joint_layers=2), dict(max_turn=3, utterance_rnn=True, previous_tables=True),
    dict(max_turn=2, unit_types=True), dict(max_turn=3, query_tables=True, remove_from=True),
    dict(max_turn=3, link_bonus=True)], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_batched_equals_one_interaction_and_one_turn_at_a_time(tmp_path, kw):
    max_turn = kw["max_turn"]
    tr = tiny_trainer(tmp_path, **kw)
    model = tr.model.eval()
    if model.decoder.link_gate is not None:      # zero-initialised: give the bonus something to add
        torch.nn.init.normal_(model.decoder.link_gate.weight)
        torch.nn.init.normal_(model.decoder.link_gate.bias)
    # interactions of 1 to 4 turns, on two databases with schemas of different sizes
    ex = tr.train_ex[:6] + tr.valid_ex[:3]
    assert len({len(e) for e in ex}) > 1 and len({len(e.unit_texts) for e in ex}) > 1
    with torch.no_grad():
        batched = model(ex)
        one_by_one = model.forward_unbatched(ex)
    assert torch.equal(batched.targets, one_by_one.targets) and torch.equal(batched.mask, one_by_one.mask)
    a, b = real_part(batched.logp, one_by_one.logp, batched.mask)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    # and the comparison can fail: a different history changes later turns
    model.max_turn = max_turn % 5 + 1
    with torch.no_grad():
        other = model(ex)
    a2, _ = real_part(other.logp, one_by_one.logp, batched.mask)
    assert not torch.allclose(a2, b, atol=1e-4)


def test_batched_gradients_equal_unbatched(tmp_path):
    tr = tiny_trainer(tmp_path, max_turn=3)
    model = tr.model
    ex = tr.train_ex[:4]
    grads = []
    for fwd in (model.forward, model.forward_unbatched):
        model.zero_grad(set_to_none=True)
        out = fwd(ex)
        nll = -out.logp.gather(-1, out.targets.unsqueeze(-1)).squeeze(-1)[out.mask].sum()
        nll.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(n.startswith("encoder.") for n in grads[0])          # BERT is fine-tuned here
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-4, rtol=1e-3), n


def test_turn_rnn_batched_over_interactions_equals_each_alone():
    from text2sql.turn_rnn import TurnRNN
    torch.manual_seed(0)
    rnn = TurnRNN(8, 6)
    pre = torch.randn(3, 8)
    lengths = [4, 1, 3]
    turns = torch.randn(3, 4, 8)
    for b, n in enumerate(lengths):
        turns[b, n:] = 0.0
    for max_turn in (1, 2, 3, 10):
        hist, state = rnn(pre, turns, max_turn)
        for b, n in enumerate(lengths):
            h1, s1 = rnn(pre[b:b + 1], turns[b:b + 1, :n], max_turn)
            assert torch.allclose(hist[b, :n], h1[0], atol=1e-6) and torch.allclose(state[b, :n], s1[0], atol=1e-6)


def test_batched_beam_search_equals_one_turn_at_a_time(tmp_path):
    tr = tiny_trainer(tmp_path, epochs=8, lr=3e-3)
    tr.run()
    model = tr.model.eval()
    ex = tr.train_ex[:5]
    batched = model.predict(ex, beam=3, constrained=True, max_len=25)
    alone = [model.predict([e], beam=3, constrained=True, max_len=25)[0] for e in ex]
    assert batched == alone
    greedy = model.predict(ex, constrained=True, max_len=25)
    assert model.predict(ex, beam=1, constrained=True, max_len=25) == greedy


def test_bf16_autocast_trains(tmp_path):
    tr = tiny_trainer(tmp_path, amp=True, max_turn=3)
    meter = Meter(len(tr.vocab))
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    losses = [tr.train_step(b, meter) for b in batches(tr.train_ex[:8], tr.cfg, 0)]
    assert all(torch.isfinite(torch.tensor(losses)))
    changed = [n for n, p in tr.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any(n.startswith("encoder.") for n in changed) and any(n.startswith("decoder.") for n in changed)
    # the parameters themselves stay fp32 (autocast casts per op, it never converts the model)
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    # the log-probs, which the losses and beam scores sum, are float32 on every device (CPU
    # autocast would leave log_softmax in bf16), and near the float32 model's
    model, ex = tr.model.eval(), tr.valid_ex[:4]
    with torch.no_grad():
        plain = model(ex)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ex)
    assert low.logp.dtype == torch.float32
    a, b = real_part(low.logp, plain.logp, plain.mask)
    assert not torch.equal(a, b) and (a.exp() - b.exp()).abs().max() < 0.05


def test_bf16_autocast_gradients_follow_the_float32_ones(tmp_path):
    """Under CPU autocast the decoder casts its step weights once and runs the step attention in
    float32 (decoder.prepare): every module's gradient must still be the float32 one, up to bf16's
    rounding; a gradient lost on the way (a deferred sum never run) would make it zero."""
    from text2sql.model import MODULES, module_of
    from text2sql.metrics import sequence_loss
    tr = tiny_trainer(tmp_path, max_turn=3, utterance_rnn=True, previous_tables=True)
    model, ex = tr.model.eval(), tr.train_ex[:6]
    K = len(tr.vocab)

    def grads(amp):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(ex)
        loss = sequence_loss(out.logp.float(), out.targets, out.mask, K, "sum", len(ex))[0]
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}

    plain, low = grads(False), grads(True)
    assert set(plain) == set(low), set(plain) ^ set(low)
    for m in MODULES:
        names = [n for n in plain if module_of(n) == m]
        assert names, m
        a, b = (torch.cat([g[n].flatten() for n in names]) for g in (plain, low))
        cos = torch.nn.functional.cosine_similarity(a, b, dim=0)
        assert cos > 0.98 and 0.9 < b.norm() / a.norm() < 1.1, (m, float(cos), float(b.norm() / a.norm()))


def _train(tmp_path, name, nproc, extra=()):
    run = str(tmp_path / name)
    args = ["-m", "text2sql", "train", "--data", TINY_DATA, "--bert", "tiny", "--tiny_dataset", "6",
            "--batch_size", "4", "--max_steps", "1", "--epochs", "1", "--dropout", "0", "--decoder_size", "48",
            "--turn_size", "48", "--train_eval_size", "2", "--cache_dir", "", "--run_dir", run, *extra]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    train_row = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))][0]
    state = torch.load(os.path.join(run, "last.pt"), map_location="cpu", weights_only=False)["model"]
    return train_row, state, p


@pytest.mark.parametrize("weighting", ["sum", "per_step"])
def test_two_processes_take_the_same_step_as_one(tmp_path, weighting):
    one_row, one, _ = _train(tmp_path, "one", 1, ("--loss_weighting", weighting))
    two_row, two, p = _train(tmp_path, "two", 2, ("--loss_weighting", weighting))
    assert "2 processes" in p.stdout
    assert one_row["step"] == two_row["step"] == 1
    assert abs(one_row["train_loss"] - two_row["train_loss"]) < 1e-4 * max(1.0, abs(one_row["train_loss"]))
    init = _train(tmp_path, "init", 1, ("--loss_weighting", weighting, "--lr", "0", "--lr_bert", "0"))[1]
    moved = 0
    for k in one:
        assert torch.allclose(one[k], two[k], atol=2e-6, rtol=1e-5), k
        moved += int(not torch.equal(one[k], init[k]))
    assert moved > 10                # the step really changed the parameters, encoder included
    assert any(not torch.equal(one[k], init[k]) for k in one if k.startswith("encoder."))


def test_grad_checkpointing_gives_the_same_step_and_keeps_less(tmp_path):
    """--grad_checkpointing recomputes BERT in the backward pass: the same loss and gradients as
    keeping the activations (dropout included: the recompute replays the RNG), and the forward pass
    saves fewer bytes for backward. Off, the same code keeps everything (the check can fail)."""
    saved_bytes, grads, losses = [], [], []
    for on in (False, True):
        tr = tiny_trainer(tmp_path / str(on), dropout=0.1, grad_checkpointing=on)
        model = tr.model.train()
        ex = tr.train_ex[:4]
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(ex)
            nll = -out.logp.gather(-1, out.targets.unsqueeze(-1)).squeeze(-1)[out.mask].sum()
        nll.backward()
        saved_bytes.append(total[0])
        losses.append(nll.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("encoder.bert.") for n in grads[1])
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4), n
    assert saved_bytes[1] < 0.8 * saved_bytes[0], saved_bytes
