"""scripts/train_sparc.sh, the shipped SParC recipe, end to end on the shipped tiny data with a tiny
random BERT: both learning-rate phases, the two beam-4 evaluations, and a re-run that trains nothing."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_train_sparc_recipe_runs_both_phases_and_resumes(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = ["bash", "scripts/train_sparc.sh", os.path.join("data", "spider_cosql", "tiny"), str(run),
           "--bert", "tiny", "--bert_layers", "2", "--cache_dir", "", "--decoder_size", "32", "--turn_size", "32"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-1500:]
    valid = [json.loads(l) for l in open(run / "metrics.jsonl") if '"valid"' in l]
    assert [r["epoch"] for r in valid] == list(range(1, 17))
    assert [json.loads(l) for l in open(run / "resumes.jsonl")] == [
        {"after_epoch": 10, "step": 40, "changed": {"epochs": [10, 16], "lr": [3e-4, 1e-4]}}]
    cfg = json.load(open(run / "config.json"))
    assert cfg["utterance_rnn"] and cfg["bert_layers"] == 2 and cfg["remove_from"]
    assert cfg["unit_types"] and cfg["previous_tables"] and cfg["sample_previous"] == 0.0
    assert cfg["label_smoothing"] == 0.1 and cfg["ema"] == 0.999
    # bf16 autocast exactly where the CPU has bf16 units (env AMP=0 would keep float32)
    from text2sql.tensors import has_bf16
    assert cfg["amp"] == (has_bf16("cpu") and os.environ.get("AMP") != "0")
    # the average validates; the raw weights are logged beside it
    assert len([l for l in open(run / "metrics.jsonl") if '"valid_raw"' in l]) == 16
    report = json.load(open(run / "beam4" / "eval_dev.json"))
    assert report["decoding"]["beam"] == 4 and report["questions"] == 44
    turns = json.load(open(run / "beam4_turn2" / "eval_dev.json"))["decoding"]
    assert (turns["beam"], turns["turn_beam"]) == (4, 2)
    # again: both phases are done, so only the evaluation runs
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-1500:]
    assert len([l for l in open(run / "metrics.jsonl") if '"valid"' in l]) == 16
    assert "resumed" not in p.stdout + p.stderr
