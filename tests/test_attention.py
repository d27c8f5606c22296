"""Masked softmax and the attention modules: zero for padding, never NaN."""
import pytest
import torch

from text2sql.attention import Attention, UtteranceDBAttention, masked_softmax


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_masked_softmax_zeroes_masked_and_normalises_the_rest():
    scores = torch.randn(3, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    w = masked_softmax(scores, mask)
    assert torch.equal(w[0, 2:], torch.zeros(3))
    assert torch.allclose(w[0, :2], torch.softmax(scores[0, :2], -1))
    assert torch.allclose(w[2], torch.softmax(scores[2], -1))
    # the all-False row: zeros, not NaN and not a uniform 1/5
    assert torch.equal(w[1], torch.zeros(5))
    (w * torch.randn(3, 5)).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert torch.equal(scores.grad[1], torch.zeros(5))


def test_masked_softmax_huge_scores_and_other_dim():
    scores = torch.tensor([[1e30, -1e30], [3.0, 1e30]])
    mask = torch.tensor([[True, False], [True, False]])
    w = masked_softmax(scores, mask)
    assert torch.equal(w, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    # along dim 0 with a broadcast mask
    s = torch.randn(4, 3)
    m = torch.tensor([True, True, False, False]).unsqueeze(1)          # [4, 1]
    w0 = masked_softmax(s, m, dim=0)
    assert torch.allclose(w0[:2], torch.softmax(s[:2], 0)) and torch.equal(w0[2:], torch.zeros(2, 3))


def test_attention_shapes_and_weights():
    att = Attention(4, 6)
    keys, values = torch.randn(2, 5, 6), torch.randn(2, 5, 3)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    ctx, w = att(torch.randn(2, 7, 4), keys, mask, values=values)
    assert ctx.shape == (2, 7, 3) and w.shape == (2, 7, 5)
    assert torch.allclose(w.sum(-1), torch.ones(2, 7))
    assert torch.equal(w[1, :, 2:], torch.zeros(7, 3))
    assert torch.allclose(ctx, torch.bmm(w, values))
    # the score really is q . W . k
    q = torch.randn(2, 4)
    ctx1, w1 = att(q, keys, mask)
    expected = torch.softmax(torch.einsum("bq,kq,bnk->bn", q, att.proj.weight, keys), -1)
    assert ctx1.shape == (2, 6) and torch.allclose(w1[0], expected[0], atol=1e-6)


def test_attention_to_all_masked_row_is_zero_context_with_finite_grad():
    att = Attention(4, 6)
    q = torch.randn(2, 4, requires_grad=True)
    keys = torch.randn(2, 3, 6, requires_grad=True)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    ctx, w = att(q, keys, mask)
    assert torch.equal(ctx[1], torch.zeros(6)) and torch.equal(w[1], torch.zeros(3))
    assert torch.allclose(ctx[0], keys[0, 0])           # one visible key: all weight on it
    ctx.pow(2).sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(keys.grad).all()
    assert torch.isfinite(att.proj.weight.grad).all()


def test_attention_with_no_keys_at_all():
    att = Attention(4, 6)
    ctx, w = att(torch.randn(2, 3, 4), torch.randn(2, 0, 6), torch.zeros(2, 0, dtype=torch.bool))
    assert ctx.shape == (2, 3, 6) and torch.equal(ctx, torch.zeros(2, 3, 6)) and w.shape == (2, 3, 0)


def test_utterance_db_attention_shapes_padding_and_pre_turn():
    H = 8
    m = UtteranceDBAttention(H)
    utt, units = torch.randn(3, 5, H, requires_grad=True), torch.randn(3, 4, H)
    utt_mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])  # row 2: pre-turn
    unit_mask = torch.tensor([[True] * 4, [True, True, True, False], [True, True, False, False]])
    u_out, d_out = m(utt, utt_mask, units, unit_mask)
    assert u_out.shape == (3, 5, H) and d_out.shape == (3, 4, H)
    assert torch.equal(u_out[~utt_mask], torch.zeros(int((~utt_mask).sum()), H))
    assert torch.equal(d_out[~unit_mask], torch.zeros(int((~unit_mask).sum()), H))
    assert torch.isfinite(u_out).all() and torch.isfinite(d_out).all()
    # the pre-turn has no utterance: its units see a zero context, i.e. just the residual path
    expected = m.db_norm(units[2, :2] + m.db_out(torch.zeros(2, H)))
    assert torch.allclose(d_out[2, :2], expected, atol=1e-6)
    # padding in the utterance must not leak into the units' view of it
    utt2 = utt.detach().clone()
    utt2[1, 2:] = 100.0
    _, d_out2 = m(utt2, utt_mask, units, unit_mask)
    assert torch.allclose(d_out2, d_out, atol=1e-6)
    (u_out.sum() + d_out.sum()).backward()
    assert torch.isfinite(utt.grad).all() and utt.grad[1, 2:].eq(0).all()


def test_joint_layer_ignores_and_zeroes_padding():
    from text2sql.attention import JointLayer
    torch.manual_seed(0)
    layer = JointLayer(32, head_dim=8).eval()
    x = torch.randn(3, 7, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [0] * 7], dtype=torch.bool)
    x = x * mask.unsqueeze(-1)
    out = layer(x, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))       # padding, and an all-padding row
    # what sits in padding does not change real positions; real positions do change each other
    y = x.clone()
    y[1, 3:] = 5.0
    assert torch.allclose(layer(y, mask)[1, :3], out[1, :3], atol=1e-6)
    z = x.clone()
    z[1, 2] = torch.randn(32)          # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(layer(z, mask)[1, :2], out[1, :2], atol=1e-4)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in layer.parameters())
