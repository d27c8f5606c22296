"""What a user gets for a mistake on the command line: one line naming the file, folder or flag,
exit status 2, no traceback, and no work lost (a trained run folder is never trained over)."""
import json
import os

import pytest

from text2sql.__main__ import main
from text2sql.config import TrainConfig
from text2sql.data import read_split
from text2sql.errors import ConfigError, DataError
from text2sql.evaluation import evaluate_files
from text2sql.train import Trainer
from test_model import cfg_for, quiet


def one_line_error(capsys, argv) -> str:
    """Run the CLI in this process; assert it failed with one ``error:`` line and return it."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def run(concert_data, tmp_path):
    """A run folder with checkpoints, one epoch on the test data (tiny random BERT)."""
    return Trainer(cfg_for(concert_data, tmp_path, epochs=1), log=quiet, progress=False).run()


def test_missing_runs_and_files_are_one_line_errors(run, concert_data, tmp_path, capsys):
    nope = str(tmp_path / "nope")
    assert "no such run folder" in one_line_error(capsys, ["evaluate", "--run", nope])
    assert nope in one_line_error(capsys, ["predict", "--run", nope, "--tables",
                                           f"{concert_data}/tables.json", "--db_id", "concerts"])
    assert "no such run folder" in one_line_error(capsys, ["train", "--resume", nope])
    assert "no such run folder" in one_line_error(capsys, ["evaluate", "--run", run.run_dir, "--ensemble", nope])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a run folder (no config.json" in one_line_error(capsys, ["evaluate", "--run", str(empty)])
    missing = str(tmp_path / "questions.txt")
    assert missing in one_line_error(capsys, ["predict", "--run", run.run_dir, "--tables",
                                              f"{concert_data}/tables.json", "--db_id", "concerts",
                                              "--input", missing])
    assert missing in one_line_error(capsys, ["evaluate", "--gold", missing, "--pred", missing,
                                              "--tables", f"{concert_data}/tables.json"])
    # a --data folder that is not there is named, not a tables.json beside it
    err = one_line_error(capsys, ["data", "check", "--data", str(tmp_path / "nodata")])
    assert f"{tmp_path / 'nodata'}: no such data directory" in err
    # --raw_weights on a run with one set of weights
    assert "--raw_weights" in one_line_error(capsys, ["evaluate", "--run", run.run_dir, "--raw_weights"])


def test_evaluate_says_which_interactions_it_could_not_score(run, concert_data, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    items = json.load(open(f"{concert_data}/dev.json"))
    items[1]["database_id"] = "no_such_db"
    (bad / "dev.json").write_text(json.dumps(items))
    (bad / "train.json").write_text(open(f"{concert_data}/train.json").read())
    (bad / "tables.json").write_text(open(f"{concert_data}/tables.json").read())
    assert main(["evaluate", "--run", run.run_dir, "--data", str(bad), "--out", str(tmp_path / "ev"), "--json"]) == 0
    out = capsys.readouterr()
    assert f"skipped: {bad}/dev.json: interaction 1: unknown database_id 'no_such_db'" in out.err
    assert json.loads(out.out)["interactions"] == 1      # the one interaction it could read


def test_a_prediction_file_that_stops_lining_up_is_flagged(concert_data, tmp_path, capsys):
    gold, pred = tmp_path / "gold.txt", tmp_path / "pred.txt"
    q = "SELECT count(*) FROM singer"
    gold.write_text(f"{q}\tconcerts\n{q}\tconcerts\n\n{q}\tconcerts\n\n")
    tables = f"{concert_data}/tables.json"
    pred.write_text(f"{q}\n{q}\n\n{q}\n\n")
    assert evaluate_files(str(gold), str(pred), tables)["misaligned"] is None
    pred.write_text(f"{q}\n\n{q}\n\n")        # the first interaction lost a turn
    r = evaluate_files(str(gold), str(pred), tables)
    assert "interaction 0 has 1 predicted turn(s) for 2 gold" in r["misaligned"]
    assert r["question_match"] == pytest.approx(200 / 3)   # still scored: the missing turn is wrong
    pred.write_text(f"{q}\n{q}\n\n")          # the last interaction missing
    assert "1 interaction(s), the gold 2" in evaluate_files(str(gold), str(pred), tables)["misaligned"]
    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--tables", tables]) == 0
    assert capsys.readouterr().out.startswith("warning: the predictions hold 1 interaction(s)")


def test_a_trained_run_folder_is_never_trained_over(run, concert_data, tmp_path, capsys):
    before = open(os.path.join(run.run_dir, "last.pt"), "rb").read()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(cfg_for(concert_data, tmp_path, epochs=1), log=quiet, progress=False)
    assert open(os.path.join(run.run_dir, "last.pt"), "rb").read() == before
    # a folder with only a config (a run stopped before its first epoch ended) may start again
    fresh = tmp_path / "stopped"
    fresh.mkdir()
    (fresh / "config.json").write_text("{}")
    Trainer(cfg_for(concert_data, tmp_path, epochs=1, run_dir=str(fresh)), log=quiet, progress=False)
    assert json.load(open(fresh / "config.json"))["epochs"] == 1


def test_a_resume_refuses_flags_it_would_ignore_and_says_when_there_is_nothing_to_do(run, capsys):
    err = one_line_error(capsys, ["train", "--resume", run.run_dir, "--batch_size", "7", "--epochs", "2"])
    assert "--batch_size 7 (the run has 2) cannot change on a resume" in err
    assert json.load(open(os.path.join(run.run_dir, "status.json")))["epoch"] == 1     # nothing ran
    # the same value as the run's is no change; a finished run with no new --epochs says so
    assert main(["train", "--resume", run.run_dir, "--batch_size", "2"]) == 0
    assert "nothing to do: the run is at epoch 1 of --epochs 1" in capsys.readouterr().out


def test_a_run_that_fails_while_set_up_leaves_no_folder(run, concert_data, tmp_path):
    target = tmp_path / "second_stage"
    with pytest.raises(ConfigError, match="decoder_size"):
        Trainer(cfg_for(concert_data, tmp_path, epochs=1, run_dir=str(target), init_from=run.run_dir,
                        decoder_size=32), log=quiet, progress=False)
    assert not target.exists()
    with pytest.raises(DataError):
        Trainer(cfg_for(concert_data, tmp_path, epochs=1, run_dir=str(target), distill=[str(tmp_path / "nope")]),
                log=quiet, progress=False)
    assert not target.exists()


def test_the_database_split_needs_more_databases_than_it_trains_on(concert_data):
    from text2sql.train import load_data
    with pytest.raises(DataError, match="needs more than 10 databases.*this file has 1"):
        load_data(TrainConfig(data=concert_data, protocol="db_split"), log=quiet)


def test_an_empty_utterance_is_a_bad_item(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([{"database_id": "x", "interaction": [
        {"utterance": "how many singers?", "query": "SELECT count(*) FROM singer"},
        {"utterance": "  ", "query": "SELECT count(*) FROM singer"}]}]))
    split = read_split(str(path))
    assert not split.interactions and [e.line() for e in split.errors] == [f"{path}: interaction 0 turn 1: empty utterance"]
