"""--distill: training towards trained runs' mean distribution (word-level knowledge distillation)."""
import json
import os

import pytest
import torch

from tests.test_model import cfg_for, quiet
from text2sql.config import TrainConfig
from text2sql.decoder import NEG, mean_distribution
from text2sql.errors import ConfigError
from text2sql.metrics import Meter, sequence_loss
from text2sql.train import Trainer, load_run


def _logits(n=3, L=4, V=7, masked=2):
    torch.manual_seed(0)
    logits = torch.randn(n, L, V)
    logits[..., V - masked:] = NEG          # a schema with fewer units: outputs it cannot take
    return logits


def test_distillation_gradient_vanishes_where_student_matches_teacher():
    """Cross-entropy against the teacher has gradient p - q in the logits: zero when the student's
    distribution is the teacher's, and pulling towards the teacher otherwise. Masked outputs get
    no gradient and the loss stays finite."""
    logits = _logits().requires_grad_(True)
    targets = torch.tensor([[0, 1, 2, 3]] * 3)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 2:] = False
    logp = torch.log_softmax(logits, -1)
    same = logp.detach()
    loss, kw, db = sequence_loss(logp, targets, mask, 2, "per_step", 3, teacher=same, distill=1.0)
    assert torch.isfinite(loss) and loss > 0            # the teacher's entropy
    assert torch.allclose(loss, kw + db)
    (g,) = torch.autograd.grad(loss, logits)
    assert g.abs().max() < 1e-6

    # another teacher: the gradient is (p - q) / tokens on real steps, 0 on padding and masked outputs
    other = torch.log_softmax(_logits() * 0.3 + torch.randn(3, 4, 7), -1).detach()
    logits2 = _logits().requires_grad_(True)
    logp2 = torch.log_softmax(logits2, -1)
    loss2, _, _ = sequence_loss(logp2, targets, mask, 2, "per_step", 3, teacher=other, distill=1.0)
    (g2,) = torch.autograd.grad(loss2, logits2)
    want = (logp2.exp() - other.exp()).detach() * mask.unsqueeze(-1) / mask.sum()
    assert torch.allclose(g2, want, atol=1e-6)
    assert g2[..., -2:].abs().max() == 0

    # at weight a, the loss mixes the two: (1 - a) NLL + a cross-entropy
    nll, _, _ = sequence_loss(logp2, targets, mask, 2, "per_step", 3)
    mixed, _, _ = sequence_loss(logp2, targets, mask, 2, "per_step", 3, teacher=other, distill=0.25)
    assert torch.allclose(mixed, 0.75 * nll + 0.25 * loss2)
    with pytest.raises(ValueError, match="teacher distribution"):
        sequence_loss(logp2, targets, mask, 2, "per_step", 3, teacher=other[:, :2], distill=0.5)


def test_distill_trains_towards_teachers_computed_once_per_turn(concert_data, tmp_path):
    """A student with --distill reads the mean of its teachers' teacher-forced distributions (as
    evaluate's ensemble computes them, in whatever batch a turn comes), computed once per
    interaction; the student's own RNG stream is not disturbed by loading them; a resume reloads
    them; bad teachers are one-line errors."""
    flags = dict(fix_bert=True, previous_tables=True)
    a = Trainer(cfg_for(concert_data, tmp_path / "a", epochs=4, **flags), log=quiet, progress=False).run()
    b = Trainer(cfg_for(concert_data, tmp_path / "b", epochs=3, seed=1, ema=0.9, **flags),
                log=quiet, progress=False).run()
    teachers = [a.run_dir, os.path.join(b.run_dir, "last.pt")]

    plain = Trainer(cfg_for(concert_data, tmp_path / "c", epochs=1, **flags), log=quiet, progress=False)
    rng = torch.get_rng_state()
    student = Trainer(cfg_for(concert_data, tmp_path / "d", epochs=2, distill=teachers, distill_weight=0.7,
                              **flags), log=quiet, progress=False)
    assert torch.equal(torch.get_rng_state(), rng)      # dropout draws as without --distill
    for (n, p), q in zip(plain.model.state_dict().items(), student.model.state_dict().values()):
        assert torch.equal(p, q), n                      # the same initialisation as without --distill
    t = student.teachers
    assert len(t.models) == 2 and t.models[0]._cache is student.model._cache
    student.run()
    # each interaction's teachers ran once in all, in epoch 1: 2 batches of 2 interactions
    assert t.calls == 2 and len(t.store) == sum(len(e) for e in student.train_ex)

    # what was kept is the ensemble's distribution over each turn's gold prefix
    ma, _, _ = load_run(a.run_dir)
    mb, _, _ = load_run(os.path.join(b.run_dir, "last.pt"))
    ex = student.train_ex[::-1]                          # another batch: other padding
    with torch.no_grad():
        want = mean_distribution([ma(ex).logp, mb(ex).logp])
    row = 0
    for e in ex:
        for k in range(len(e)):
            got = t.store[(id(e), k)]
            assert got.shape == (len(e.targets[k]), len(student.vocab) + len(e.unit_texts))
            assert torch.allclose(got, want[row, :got.shape[0], :got.shape[1]], atol=1e-5)
            row += 1

    # a temperature softens what is kept: q^(1/T), renormalised
    warm = Trainer(cfg_for(concert_data, tmp_path / "t2", distill=teachers, distill_temperature=2.0, **flags),
                   log=quiet, progress=False)
    warm.train_step(ex[:2], Meter(len(warm.vocab)))
    soft, row = torch.log_softmax(want / 2, -1), 0
    for e in ex[:2]:
        for k in range(len(e)):
            got = warm.teachers.store[(id(e), k)]
            assert torch.allclose(got.exp(), soft[row, :got.shape[0], :got.shape[1]].exp(), atol=1e-6)
            assert (got.exp().max(-1).values < t.store[(id(e), k)].exp().max(-1).values + 1e-6).all()
            row += 1

    # students move towards their teachers: one on the teachers alone far further than one on the gold
    def gap(trainer):
        m = trainer.model.eval()
        with torch.no_grad():
            out = m(ex)
        q = want.exp()
        kl = (q * (want - out.logp)).masked_fill(~(want > NEG / 10), 0).sum(-1)
        return (kl * out.mask).sum() / out.mask.sum()
    plain = Trainer(cfg_for(concert_data, tmp_path / "e", epochs=8, **flags), log=quiet, progress=False)
    pure = Trainer(cfg_for(concert_data, tmp_path / "e2", epochs=8, distill=teachers, distill_weight=1.0, **flags),
                   log=quiet, progress=False)
    start = gap(plain)
    plain.model.train()
    plain.run()
    pure.model.train()
    pure.run()
    # (measured: 1.11 at the start; 8 epochs on the gold 0.66, on the teachers alone 0.04)
    assert gap(pure) < 0.5 * gap(plain) and gap(plain) < start and gap(student) < start

    resumed = Trainer(TrainConfig(resume=student.run_dir, epochs=3), log=quiet, progress=False)
    assert len(resumed.teachers.models) == 2 and resumed.cfg.distill_weight == 0.7
    assert json.load(open(os.path.join(student.run_dir, "config.json")))["distill"] == teachers

    with pytest.raises(ConfigError, match=r"other targets: --remove_from False \(here True\)"):
        Trainer(cfg_for(concert_data, tmp_path / "f", distill=[a.run_dir], remove_from=True, **flags),
                log=quiet, progress=False)
    with pytest.raises(ConfigError, match="vocabulary"):
        Trainer(cfg_for(None, tmp_path / "f2", distill=[a.run_dir], **flags), log=quiet, progress=False)
    with pytest.raises(ConfigError, match="--distill_temperature must be > 0, not 0.0"):
        Trainer(cfg_for(concert_data, tmp_path / "g0", distill=[a.run_dir], distill_temperature=0.0, **flags),
                log=quiet, progress=False)
    with pytest.raises(ConfigError, match="--distill_temperature 2.0 needs --distill"):
        Trainer(cfg_for(concert_data, tmp_path / "g1", distill_temperature=2.0, **flags), log=quiet, progress=False)
    with pytest.raises(ConfigError, match="--distill_weight 0.3 needs --distill"):
        Trainer(cfg_for(concert_data, tmp_path / "g", distill_weight=0.3, **flags), log=quiet, progress=False)
    with pytest.raises(Exception, match="no such run folder"):
        Trainer(cfg_for(concert_data, tmp_path / "h", distill=[str(tmp_path / "nowhere")], **flags),
                log=quiet, progress=False)
