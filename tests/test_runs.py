"""``runs`` and ``compare`` on run folders written by real short trainings, and EditSQL's log format."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import shared_path
from text2sql.__main__ import main
from text2sql.config import TrainConfig
from text2sql.errors import DataError
from text2sql.runs import find_runs, lifecycle, load_run, parse_editsql_log

# EditSQL's log.txt layout (its run.py), written by hand: a header, then one block per epoch from
# "Epoch:\t0", train and valid gold-passing figures in percent, bookkeeping lines, an inf loss.
EDITSQL_LOG = """Original number of training utterances:\t120
Actual number of used training examples:\t40
(Shortened by output limit of 200)
Number of steps per epoch:\t40
Batch size:\t1
Epoch:\t0
train epoch loss:\t0.5
train final gold-passing LOSS:\t80.00
train final gold-passing TOKEN_ACCURACY:\t40.50
train final gold-passing STRING_ACCURACY:\t2.25
valid gold-passing LOSS:\t90.10
valid gold-passing TOKEN_ACCURACY:\t35.00
valid gold-passing STRING_ACCURACY:\t1.50
maximum string accuracy:\t1.5
patience:\t10.1
save file:\tlogs_x/save_0
countdown:\t9

Epoch:\t1
train epoch loss:\t0.25
train final gold-passing LOSS:\t60.00
train final gold-passing TOKEN_ACCURACY:\t55.75
train final gold-passing STRING_ACCURACY:\t6.00
valid gold-passing LOSS:\tinf
valid gold-passing TOKEN_ACCURACY:\t48.25
valid gold-passing STRING_ACCURACY:\t3.00
maximum string accuracy:\t3.0
patience:\t10.201
save file:\tlogs_x/save_1
countdown:\t9

Epoch:\t2
train epoch loss:\t0.125
train final gold-passing LOSS:\t50.00
train final gold-passing TOKEN_ACCURACY:\t61.00
train final gold-passing STRING_ACCURACY:\t9.50
valid gold-passing LOSS:\t70.00
valid gold-passing TOKEN_ACCURACY:\t47.00
valid gold-passing STRING_ACCURACY:\t3.00
learning rate coefficient:\t0.8
countdown:\t8

Finished training!
"""


def quiet(*a, **k):
    pass


def base_cfg(run_dir, **kw):
    cfg = dict(bert="tiny", tiny_dataset=4, epochs=2, batch_size=4, decoder_size=32, turn_size=32,
               train_eval_size=0, cache_dir="", lr=2e-3, run_dir=str(run_dir))
    cfg.update(kw)
    return TrainConfig(**cfg)


def metrics_rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def expected_best(rows, key):
    """The best valid figure and its epoch, the earliest epoch on ties, from metrics.jsonl itself."""
    valid = [r for r in rows if r["split"] == "valid"]
    top = max(valid, key=lambda r: (r[key], -r["epoch"]))
    return top[key], top["epoch"]


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """Real short trainings on the shipped tiny data (tiny random BERT), plus broken folders."""
    from text2sql import train
    root = tmp_path_factory.mktemp("logs")
    for mt in (1, 3):
        train.Trainer(base_cfg(root / f"mt{mt}", max_turn=mt, note=f"max_turn {mt}"),
                      log=quiet, progress=False).run()

    # failed: an exception in the middle of training, through the CLI's own entry point
    def boom(self, batch, meter):
        raise RuntimeError("CUDA out of memory (simulated)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.Trainer, "train_step", boom)
        with pytest.raises(RuntimeError):
            train.main(base_cfg(root / "failed", max_turn=3, note="will fail"))

    # diverged: a real NaN weight, caught by the non-finite guard on the first step
    real_step = train.Trainer.train_step

    def poisoned(self, batch, meter):
        import torch
        with torch.no_grad():
            self.model.decoder.fuse.weight[0, 0] = float("nan")
        return real_step(self, batch, meter)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.Trainer, "train_step", poisoned)
        assert train.main(base_cfg(root / "diverged", max_turn=3)) == 3

    # killed hard: status.json still says running, but its process is gone
    shutil.copytree(root / "mt3", root / "killed")
    st = json.loads((root / "killed" / "status.json").read_text())
    st.update(status="running", pid=dead_pid())
    (root / "killed" / "status.json").write_text(json.dumps(st))

    # corrupt: garbage config.json, a metrics.jsonl whose last line was cut off, garbage status.json
    shutil.copytree(root / "mt1", root / "corrupt")
    (root / "corrupt" / "config.json").write_text("{'not': json")
    text = (root / "corrupt" / "metrics.jsonl").read_text()
    (root / "corrupt" / "metrics.jsonl").write_text(text[:-25])
    (root / "corrupt" / "status.json").write_text("\x00\x00")

    # half-written: the run had only written its config when it died
    (root / "starting").mkdir()
    shutil.copy(root / "mt1" / "config.json", root / "starting" / "config.json")
    (root / "not_a_run").mkdir()                  # an unrelated folder is not listed

    # evaluate's reports, where users put them: below the run folder (--out RUN/NAME)
    for out, flags in (("greedy", []), ("beam2", ["--beam", "2"]), ("gold", ["--use_gold_previous"])):
        assert main(["evaluate", "--run", str(root / "mt3"), "--out", str(root / "mt3" / out), *flags]) == 0
    return root


def listing(logdir, capsys):
    assert main(["runs", "--logdir", str(logdir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    return out, {r["name"]: r for r in out["runs"]}


def test_runs_lists_every_folder_with_the_differing_key(logdir, capsys):
    out, rows = listing(logdir, capsys)
    assert set(rows) == {"mt1", "mt3", "failed", "diverged", "killed", "corrupt", "starting"}
    assert out["config_keys_that_differ"] == ["max_turn"]      # note, run_dir: not config
    assert rows["mt1"]["config"] == {"max_turn": 1} and rows["mt3"]["config"] == {"max_turn": 3}
    assert rows["mt1"]["note"] == "max_turn 1" and rows["mt1"]["epochs_done"] == 2
    assert rows["mt1"]["epochs"] == 2 and rows["mt1"]["split"] == "valid"


def test_best_figures_and_epochs_come_from_metrics_jsonl(logdir, capsys):
    _, rows = listing(logdir, capsys)
    for name in ("mt1", "mt3"):
        m = metrics_rows(logdir / name)
        for key in ("token_acc", "string_acc", "keyword_acc", "db_acc"):
            value, epoch = expected_best(m, key)
            assert rows[name]["best"][key] == {"value": value, "epoch": epoch}, (name, key)
        final = [r for r in m if r["split"] == "valid"][-1]
        assert rows[name]["last"]["token_acc"] == {"value": final["token_acc"], "epoch": final["epoch"]}


def test_statuses(logdir, capsys):
    _, rows = listing(logdir, capsys)
    assert rows["mt1"]["status"] == "finished"
    assert rows["failed"]["status"] == "failed: RuntimeError: CUDA out of memory (simulated)"
    assert rows["diverged"]["status"].startswith("diverged: non-finite loss")
    assert "decoder" in rows["diverged"]["status"]
    assert rows["killed"]["status"].startswith("stopped (no process")
    assert rows["starting"]["status"] == "incomplete (no metrics yet)"
    assert rows["starting"]["problems"] == []


def test_a_run_names_the_machine_of_each_epoch(logdir):
    """The same VM comes on hosts of different speeds: each epoch's train row, and status.json, say
    which CPU (and bf16 unit) ran it, so that epoch times can be compared across runs."""
    import os

    import torch

    from text2sql.tensors import has_bf16
    status = json.loads((logdir / "mt1" / "status.json").read_text())
    rows = [json.loads(l) for l in open(logdir / "mt1" / "metrics.jsonl")]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 2 and all(r["machine"] == status["machine"] for r in train_rows)
    assert status["machine"].startswith(f"{os.cpu_count()} CPU cores (")
    assert f"torch {torch.__version__}" in status["machine"]
    assert any(u in status["machine"] for u in ("AMX", "AVX512-BF16", "bf16 units")) == has_bf16("cpu")
    # validation rows carry the figures only
    assert not any("machine" in r for r in rows if r["split"] != "train")


def test_a_live_run_on_this_host_is_running(logdir):
    run = load_run(str(logdir / "mt1"))
    run.status = dict(run.status, status="running", pid=os.getpid())
    assert lifecycle(run) == "running"
    run.status["host"] = "some-other-host"
    assert lifecycle(run) == "running on some-other-host (not checked)"


def test_corrupt_folder_is_reported_and_keeps_what_it_can(logdir, capsys):
    _, rows = listing(logdir, capsys)
    bad = rows["corrupt"]
    problems = " | ".join(bad["problems"])
    assert "corrupt: config.json: not JSON" in problems
    assert "corrupt: status.json: not JSON" in problems
    n = len(metrics_rows(logdir / "mt1"))
    assert f"incomplete: metrics.jsonl line {n} cut off" in problems
    assert bad["config"] is None and bad["status"] == "unknown (no status.json)"
    # the rows before the cut still count
    kept = metrics_rows(logdir / "mt1")[:-1]
    assert bad["best"]["token_acc"] == dict(zip(("value", "epoch"), expected_best(kept, "token_acc")))


def test_runs_table_in_plain_text(logdir, capsys):
    assert main(["runs", "--logdir", str(logdir)]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert set(lines) == {"mt1", "mt3", "failed", "diverged", "killed", "corrupt", "starting"}
    assert "max_turn=1" in lines["mt1"] and "max_turn=3" in lines["mt3"]
    assert "max_turn 1" in lines["mt1"]                              # the note
    value, epoch = expected_best(metrics_rows(logdir / "mt3"), "token_acc")
    assert f"{value:.2f} @{epoch}" in lines["mt3"]
    assert "failed: RuntimeError: CUDA out of memory" in lines["failed"]
    assert "corrupt: config.json" in lines["corrupt"] and "cut off" in lines["corrupt"]
    assert "stopped (no process" in lines["killed"]


def test_runs_on_a_missing_logdir_is_one_error_line(tmp_path, capsys):
    assert main(["runs", "--logdir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nope'}: no such directory"


# ------------------------------------------------------------------------------------------
# EditSQL's log
# ------------------------------------------------------------------------------------------
def test_editsql_log_is_parsed_exactly(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text(EDITSQL_LOG)
    assert parse_editsql_log(str(path)) == [
        {"epoch": 1, "editsql_epoch": 0, "split": "train", "editsql_loss": 80.0, "token_acc": 40.5, "string_acc": 2.25},
        {"epoch": 1, "editsql_epoch": 0, "split": "valid", "editsql_loss": 90.1, "token_acc": 35.0, "string_acc": 1.5},
        {"epoch": 2, "editsql_epoch": 1, "split": "train", "editsql_loss": 60.0, "token_acc": 55.75, "string_acc": 6.0},
        {"epoch": 2, "editsql_epoch": 1, "split": "valid", "editsql_loss": float("inf"), "token_acc": 48.25,
         "string_acc": 3.0},
        {"epoch": 3, "editsql_epoch": 2, "split": "train", "editsql_loss": 50.0, "token_acc": 61.0, "string_acc": 9.5},
        {"epoch": 3, "editsql_epoch": 2, "split": "valid", "editsql_loss": 70.0, "token_acc": 47.0, "string_acc": 3.0},
    ]


def test_editsql_log_in_fractions_is_scaled_to_percent(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("Epoch = 0\nValid gold-passing TOKEN_ACCURACY = 0.8125\nvalid gold-passing STRING_ACCURACY = 0.25\n")
    assert parse_editsql_log(str(path)) == [
        {"epoch": 1, "editsql_epoch": 0, "split": "valid", "token_acc": 81.25, "string_acc": 25.0}]


def test_a_file_that_is_not_an_editsql_log_names_itself(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("epoch 1: train loss 3.2\n")
    with pytest.raises(DataError) as e:
        parse_editsql_log(str(path))
    assert str(e.value).startswith(f"{path}: no 'Epoch:' blocks")


def test_the_shared_editsql_sparc_log():
    rows = parse_editsql_log(shared_path("reference", "editsql_sparc_log.txt"))
    valid = [r for r in rows if r["split"] == "valid"]
    top = max(valid, key=lambda r: r["token_acc"])
    assert (top["token_acc"], top["editsql_epoch"]) == (90.91, 31)
    assert max(r["string_acc"] for r in valid) == 55.94
    assert all(0 < r["token_acc"] <= 100 for r in rows)


# ------------------------------------------------------------------------------------------
# compare
# ------------------------------------------------------------------------------------------
def test_compare_says_beats_or_misses_by_how_much(logdir, tmp_path, capsys):
    high = tmp_path / "high.txt"
    high.write_text(EDITSQL_LOG.replace("48.25", "98.25"))
    low = tmp_path / "low.txt"
    low.write_text("Epoch:\t0\nvalid gold-passing TOKEN_ACCURACY:\t0.50\nvalid gold-passing STRING_ACCURACY:\t0.00\n"
                   "Epoch:\t1\nvalid gold-passing TOKEN_ACCURACY:\t2.00\nvalid gold-passing STRING_ACCURACY:\t0.00\n")
    runs = [str(logdir / "mt1"), str(logdir / "mt3")]
    for ref, target, word in ((high, 98.25, "misses"), (low, 2.00, "beats")):
        assert main(["compare", *runs, "--reference", str(ref)]) == 0
        text = capsys.readouterr().out
        line = next(ln for ln in text.splitlines() if ln.startswith(f"best token vs EditSQL {target:.2f}"))
        for name in ("mt1", "mt3"):
            value, _ = expected_best(metrics_rows(logdir / name), "token_acc")
            assert f"{word} by {abs(round(value - target, 2)):.2f}" in line
        assert "config max_turn" in text and "EditSQL (log)" in text


def test_compare_without_a_log_uses_the_published_figure(logdir, capsys):
    assert main(["compare", str(logdir / "mt1"), str(logdir / "mt3"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reference"]["targets"] == {"token_acc": 90.6, "string_acc": 55.94}
    assert out["config_keys_that_differ"] == ["max_turn"]
    for s in out["runs"]:
        value = s["best"]["token_acc"]["value"]
        assert out["verdicts"][s["name"]]["token_acc"] == f"misses by {90.6 - value:.2f}"


def test_compare_json_is_strict_json_even_with_inf_losses(logdir, tmp_path, capsys):
    ref = tmp_path / "log.txt"
    ref.write_text(EDITSQL_LOG)
    assert main(["compare", str(logdir / "mt1"), "--reference", str(ref), "--json"]) == 0

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    out = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert out["reference"]["rows"][3]["editsql_loss"] == "inf"
    assert out["reference"]["targets"] == {"token_acc": 48.25, "string_acc": 3.0}


def test_compare_plot_is_a_png(logdir, tmp_path, capsys):
    ref = tmp_path / "log.txt"
    ref.write_text(EDITSQL_LOG)
    png = tmp_path / "cmp.png"
    assert main(["compare", str(logdir / "mt1"), str(logdir / "mt3"), str(logdir / "corrupt"),
                 "--reference", str(ref), "--plot", str(png)]) == 0
    assert f"plot: {png}" in capsys.readouterr().out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    import matplotlib.image
    img = matplotlib.image.imread(str(png))
    assert img.shape[0] > 300 and img.shape[1] > 600


def test_compare_a_missing_run_is_one_error_line(logdir, tmp_path, capsys):
    assert main(["compare", str(logdir / "mt1"), str(tmp_path / "gone")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'gone'}: no such run folder"


def test_find_runs_orders_by_start_time(logdir):
    names = [r.name for r in find_runs(str(logdir))]
    assert names.index("mt1") < names.index("mt3") < names.index("failed")


def test_a_flag_added_later_counts_as_its_default_in_the_config_diff(tmp_path):
    from text2sql.config import TrainConfig
    from text2sql.runs import config_diff, load_run
    folders = []
    for name, extra in (("old", {}), ("new", {"amp": False, "max_turn": 1})):
        d = tmp_path / name
        d.mkdir()
        cfg = json.loads(TrainConfig(run_dir=str(d)).to_json())
        cfg.pop("amp")                           # the old run predates --amp
        cfg.update(extra)
        (d / "config.json").write_text(json.dumps(cfg))
        folders.append(load_run(str(d)))
    assert config_diff(folders) == ["max_turn"]
    cfg = json.loads((tmp_path / "new" / "config.json").read_text())
    cfg["amp"] = True
    (tmp_path / "new" / "config.json").write_text(json.dumps(cfg))
    assert config_diff([load_run(str(tmp_path / n)) for n in ("old", "new")]) == ["amp", "max_turn"]


def test_compare_shows_what_a_resume_changed(logdir, tmp_path, capsys):
    from text2sql import train
    run = tmp_path / "decayed"
    shutil.copytree(logdir / "mt1", run)
    train.Trainer(TrainConfig(resume=str(run), epochs=3, lr=5e-4), log=quiet, progress=False).run()
    assert main(["compare", str(logdir / "mt1"), str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_name = {s["name"]: s for s in out["runs"]}
    assert by_name["decayed"]["resumed_with"] == "lr 0.002->0.0005 after epoch 2"
    assert by_name["mt1"]["resumed_with"] == ""
    assert main(["compare", str(logdir / "mt1"), str(run)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("resumed with"))
    assert "lr 0.002->0.0005 after epoch 2" in line
    (run / "resumes.jsonl").write_text("{broken\n")
    assert main(["compare", str(run), "--json"]) == 0
    assert "corrupt: resumes.jsonl line 1" in json.loads(capsys.readouterr().out)["runs"][0]["problems"]


def report_file(run_dir, sub):
    return json.loads((run_dir / sub / "eval_dev.json").read_text())


def test_decoded_figures_come_from_evaluate_reports(logdir, capsys):
    import torch
    _, rows = listing(logdir, capsys)
    decoded = {d["path"]: d for d in rows["mt3"]["decoded"]}
    assert set(decoded) == {"greedy/eval_dev.json", "beam2/eval_dev.json", "gold/eval_dev.json"}
    epoch = torch.load(logdir / "mt3" / "best.pt", map_location="cpu", weights_only=False)["epoch"]
    for sub, beam in (("greedy", 1), ("beam2", 2), ("gold", 1)):
        rep, d = report_file(logdir / "mt3", sub), decoded[f"{sub}/eval_dev.json"]
        assert (d["question_match"], d["interaction_match"]) == (rep["question_match"], rep["interaction_match"])
        assert d["beam"] == beam and d["epoch"] == epoch and rep["decoding"]["checkpoint"]["epoch"] == epoch
        assert d["gold_previous"] == (sub == "gold") and d["own"] == (sub != "gold") and not d["stale"]
    own = max((decoded[p] for p in ("beam2/eval_dev.json", "greedy/eval_dev.json")),   # ties: first by path
              key=lambda d: (d["question_match"], d["interaction_match"]))
    assert rows["mt3"]["best_decoded"] == own
    assert rows["mt1"]["decoded"] == [] and rows["mt1"]["best_decoded"] is None
    assert main(["runs", "--logdir", str(logdir)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("mt3 "))
    assert f"{own['question_match']:.2f} / {own['interaction_match']:.2f}" in line


def test_a_turn_beam_report_says_so(logdir, tmp_path, capsys):
    run = tmp_path / "mt3"
    shutil.copytree(logdir / "mt3", run)
    rep = report_file(run, "beam2")
    assert "turn_beam" in rep["decoding"] and rep["decoding"]["turn_beam"] == 1
    rep["decoding"]["turn_beam"] = 2
    (run / "tb").mkdir()
    (run / "tb" / "eval_dev.json").write_text(json.dumps(rep))
    del rep["decoding"]["turn_beam"]              # a report from before the option
    (run / "old").mkdir()
    (run / "old" / "eval_dev.json").write_text(json.dumps(rep))
    assert main(["compare", str(run), "--json"]) == 0
    decoded = {d["path"]: d for d in json.loads(capsys.readouterr().out)["runs"][0]["decoded"]}
    assert decoded["tb/eval_dev.json"]["turn_beam"] == 2 and decoded["tb/eval_dev.json"]["own"]
    assert decoded["tb/eval_dev.json"]["described"].startswith("beam 2, turn beam 2")
    assert decoded["old/eval_dev.json"]["turn_beam"] == 1
    assert "turn beam" not in decoded["old/eval_dev.json"]["described"]


def test_a_report_of_the_older_strict_metric_says_so(logdir, tmp_path, capsys):
    run = tmp_path / "mt3"
    shutil.copytree(logdir / "mt3", run)
    rep = report_file(run, "beam2")
    assert rep["metric"] == "official"
    del rep["metric"], rep["strict"]             # a report from before the official metric
    (run / "beam2" / "eval_dev.json").write_text(json.dumps(rep))
    assert main(["compare", str(run), "--json"]) == 0
    decoded = {d["path"]: d for d in json.loads(capsys.readouterr().out)["runs"][0]["decoded"]}
    assert decoded["beam2/eval_dev.json"]["metric"] == "strict"
    assert decoded["beam2/eval_dev.json"]["described"].startswith("beam 2, @") and "strict metric" in \
        decoded["beam2/eval_dev.json"]["described"]
    assert decoded["greedy/eval_dev.json"]["metric"] == "official"
    assert "metric" not in decoded["greedy/eval_dev.json"]["described"]
    # evaluate --rescore brings it to the official metric
    assert main(["evaluate", "--rescore", str(run / "beam2")]) == 0
    capsys.readouterr()
    assert main(["compare", str(run), "--json"]) == 0
    decoded = {d["path"]: d for d in json.loads(capsys.readouterr().out)["runs"][0]["decoded"]}
    assert decoded["beam2/eval_dev.json"]["metric"] == "official"


def test_compare_judges_decoded_figures_against_editsql(logdir, tmp_path, capsys):
    run = tmp_path / "mt3"
    shutil.copytree(logdir / "mt3", run)
    # a gold-previous report never counts as the run's own figure, however high
    rep = report_file(run, "gold")
    rep["question_match"], rep["interaction_match"] = 99.0, 98.0
    (run / "gold" / "eval_dev.json").write_text(json.dumps(rep))
    assert main(["compare", str(logdir / "mt1"), str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    best = out["runs"][1]["best_decoded"]
    assert best["path"] != "gold/eval_dev.json"
    assert out["verdicts"]["mt3"]["question_match"] == f"misses by {47.2 - best['question_match']:.2f}"
    assert out["verdicts"]["mt3"]["interaction_match"] == f"misses by {29.5 - best['interaction_match']:.2f}"
    assert out["verdicts"]["mt1"]["question_match"] == "-"
    assert main(["compare", str(logdir / "mt1"), str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    gold = next(l for l in lines if l.startswith("decoded QM / IM gold/eval_dev.json"))
    assert "99.00 / 98.00 (greedy, gold previous" in gold
    beam = next(l for l in lines if l.startswith("decoded QM / IM beam2/eval_dev.json"))
    assert "(beam 2, @" in beam and beam.split()[5] == "-"          # mt1 has no such report


def test_evaluate_from_python_leaves_gradients_on(logdir, tmp_path):
    import torch
    assert main(["evaluate", "--run", str(logdir / "mt1"), "--out", str(tmp_path / "e")]) == 0
    assert torch.is_grad_enabled()          # a caller that trains next still gets gradients


def test_a_report_of_an_older_best_is_stale_and_a_broken_one_a_problem(logdir, tmp_path, capsys):
    run = tmp_path / "mt3"
    shutil.copytree(logdir / "mt3", run)
    # a report naming its checkpoint: stale when that is not the epoch best.pt now holds
    rep = report_file(run, "greedy")
    rep["decoding"]["checkpoint"]["epoch"] += 5
    (run / "greedy" / "eval_dev.json").write_text(json.dumps(rep))
    # reports from before evaluate named it: stale when older than best.pt
    for sub in ("beam2", "gold"):
        rep = report_file(run, sub)
        del rep["decoding"]["checkpoint"]
        (run / sub / "eval_dev.json").write_text(json.dumps(rep))
        os.utime(run / sub / "eval_dev.json", (1_000_000, 1_000_000))
    # a copied folder whose reports name their checkpoint is judged by epoch, not by file times
    copied = tmp_path / "copied"
    shutil.copytree(logdir / "mt3", copied)
    os.utime(copied / "best.pt")                     # best.pt now newer than every report
    assert main(["compare", str(copied), "--json"]) == 0
    assert not any(d["stale"] for d in json.loads(capsys.readouterr().out)["runs"][0]["decoded"])
    (run / "extra").mkdir()
    (run / "extra" / "eval_dev.json").write_text('{"question_match": "high"}')
    assert main(["compare", str(run), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["runs"][0]
    assert all(d["stale"] and "stale: best.pt is newer" in d["described"] for d in s["decoded"])
    assert s["best_decoded"] is None                     # no current figure to judge
    assert "corrupt: extra/eval_dev.json: no question and interaction match" in s["problems"]


def test_an_ema_runs_own_figure_is_its_averaged_weights_and_raw_ones_are_an_ablation(tmp_path, capsys):
    from text2sql import train
    run = tmp_path / "ema"
    train.Trainer(base_cfg(run, ema=0.9, epochs=3), log=quiet, progress=False).run()
    assert {r["split"] for r in metrics_rows(run)} == {"train", "valid", "valid_raw"}
    for out, flags in (("avg", []), ("raw", ["--raw_weights"])):
        assert main(["evaluate", "--run", str(run), "--out", str(run / out), *flags]) == 0
    capsys.readouterr()
    assert report_file(run, "avg")["decoding"]["checkpoint"]["weights"] == "averaged"
    assert report_file(run, "raw")["decoding"]["checkpoint"]["weights"] == "raw"
    assert main(["compare", str(run), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["runs"][0]
    decoded = {d["path"]: d for d in s["decoded"]}
    assert decoded["raw/eval_dev.json"]["raw_weights"] and not decoded["raw/eval_dev.json"]["own"]
    assert "raw weights" in decoded["raw/eval_dev.json"]["described"]
    assert decoded["avg/eval_dev.json"]["own"] and s["best_decoded"]["path"] == "avg/eval_dev.json"
    # the run's best valid figures are the average's, not the raw weights' row
    assert s["best"]["token_acc"] == dict(zip(("value", "epoch"), expected_best(metrics_rows(run), "token_acc")))
    # compare's plot draws the raw weights' curve dashed beside the average's
    import matplotlib.axes
    drawn = []
    real_plot = matplotlib.axes.Axes.plot

    def spy(self, *args, **kw):
        drawn.append((list(args[1]) if len(args) > 1 else None, kw.get("label", ""), kw.get("linestyle")))
        return real_plot(self, *args, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.axes.Axes, "plot", spy)
        assert main(["compare", str(run), "--plot", str(tmp_path / "ema.png")]) == 0
    raw_rows = [r for r in metrics_rows(run) if r["split"] == "valid_raw"]
    dashed = [(ys, label) for ys, label, style in drawn if "raw weights" in label]
    assert [ys for ys, _ in dashed] == [[r["token_acc"] for r in raw_rows], [r["string_acc"] for r in raw_rows]]
    assert all(style == "--" for _, label, style in drawn if "raw weights" in label)


def test_an_init_from_runs_epochs_are_drawn_after_its_parents(logdir, tmp_path, capsys):
    """init.json records where an --init_from run started, chained through a second one: compare
    names it, and its plot draws the run's epochs after its parents' (x = own epoch + offset)."""
    from text2sql import train
    second = tmp_path / "second"
    train.Trainer(base_cfg(second, init_from=str(logdir / "mt3"), epochs=2, max_turn=3), log=quiet,
                  progress=False).run()
    parent_epoch = expected_best(metrics_rows(logdir / "mt3"), "token_acc")[1]     # its best.pt
    rec = json.loads((second / "init.json").read_text())
    assert rec["from"] == os.path.join(str(logdir / "mt3"), "best.pt") and rec["epoch"] == parent_epoch
    assert rec["offset"] == parent_epoch
    third = tmp_path / "third"
    train.Trainer(base_cfg(third, init_from=str(second / "last.pt"), epochs=1, max_turn=3), log=quiet,
                  progress=False).run()
    assert json.loads((third / "init.json").read_text())["offset"] == parent_epoch + 2

    assert main(["compare", str(logdir / "mt3"), str(second), str(third), "--json"]) == 0
    by_name = {s["name"]: s for s in json.loads(capsys.readouterr().out)["runs"]}
    assert by_name["mt3"]["started_from"] == "" and by_name["mt3"]["epoch_offset"] == 0
    assert by_name["third"]["started_from"] == f"{second / 'last.pt'} (epoch 2)"
    assert by_name["third"]["epoch_offset"] == parent_epoch + 2
    assert main(["compare", str(second), str(third)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("started from"))
    assert "(epoch 2)" in line and f"(epoch {parent_epoch})" in line

    import matplotlib.axes
    drawn = []
    real_plot = matplotlib.axes.Axes.plot

    def spy(self, *args, **kw):
        drawn.append((list(args[0]), kw.get("label", "")))
        return real_plot(self, *args, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.axes.Axes, "plot", spy)
        assert main(["compare", str(logdir / "mt3"), str(second), str(third), "--plot",
                     str(tmp_path / "chain.png")]) == 0
    xs = {label.split(" ")[0].rstrip(","): x for x, label in drawn}
    assert xs["mt3"] == [1, 2]
    assert xs["second"] == [parent_epoch + 1, parent_epoch + 2]
    assert xs["third"] == [parent_epoch + 3]
    assert any(label.startswith("third") and f"after epoch {parent_epoch + 2}" in label for _, label in drawn)
    # a damaged record is a listed problem, and the run is drawn from epoch 1
    (third / "init.json").write_text("{oops")
    capsys.readouterr()
    assert main(["compare", str(third), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["runs"][0]
    assert s["epoch_offset"] == 0 and any("init.json" in p for p in s["problems"])


def test_an_ensemble_report_in_another_members_folder_is_judged_by_that_members_checkpoint(
        logdir, tmp_path, capsys):
    import torch
    a, b = tmp_path / "mt3", tmp_path / "mt1"
    shutil.copytree(logdir / "mt3", a)
    shutil.copytree(logdir / "mt1", b)
    for run in (a, b):                      # only the ensemble's reports below
        for sub in ("greedy", "beam2", "gold"):
            shutil.rmtree(run / sub, ignore_errors=True)
    epoch = {r: torch.load(r / "best.pt", map_location="cpu", weights_only=False)["epoch"] for r in (a, b)}
    # a real ensemble decoding, its report kept in the second member's folder
    assert main(["evaluate", "--run", str(a), "--ensemble", str(b), "--out", str(b / "ens")]) == 0
    capsys.readouterr()
    rep = report_file(b, "ens")
    assert rep["decoding"]["checkpoint"]["epoch"] == epoch[a]
    assert rep["decoding"]["ensemble_checkpoints"][0]["epoch"] == epoch[b]

    def decoded(run):
        assert main(["compare", str(run), "--json"]) == 0
        (d,) = json.loads(capsys.readouterr().out)["runs"][0]["decoded"]
        return d
    d = decoded(b)
    assert d["ensemble"] == 2 and d["epoch"] == epoch[b] and not d["stale"] and not d["own"]
    # the same file in the first member's folder is judged by the first member's checkpoint
    shutil.copytree(b / "ens", a / "ens")
    d = decoded(a)
    assert d["epoch"] == epoch[a] and not d["stale"]
    # the second member's best.pt moved on: stale there, still current in the first's folder
    rep["decoding"]["ensemble_checkpoints"][0]["epoch"] = epoch[b] + 5
    for run in (a, b):
        (run / "ens" / "eval_dev.json").write_text(json.dumps(rep))
    assert decoded(b)["stale"] and not decoded(a)["stale"]
    # read from another directory (the recorded paths lead nowhere): matched by folder name
    rep["decoding"]["ensemble"] = ["elsewhere/mt3", "elsewhere/mt1"]
    rep["decoding"]["ensemble_checkpoints"][0]["epoch"] = epoch[b]
    (b / "ens" / "eval_dev.json").write_text(json.dumps(rep))
    assert decoded(b)["epoch"] == epoch[b]
