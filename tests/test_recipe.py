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
    env.pop("AMP", None)
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
    # the learnt layer mix is the recipe's (extra flags override its --bert_layers 7, not the mix)
    assert cfg["bert_mix"]
    assert cfg["unit_types"] and cfg["previous_tables"] and cfg["sample_previous"] == 0.0
    assert cfg["label_smoothing"] == 0.1 and cfg["ema"] == 0.999
    # float32 on a CPU, even one with bf16 units, unless AMP=1 (scripts/ensemble_sparc.sh sets it for its members, below)
    assert cfg["amp"] is False
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


def test_ensemble_script_trains_the_four_members_and_decodes_their_ensemble(tmp_path):
    """scripts/ensemble_sparc.sh: the four members of the best interaction-match ensemble, each
    through the recipe (both phases), then their ensemble decoded with a beam over interactions.
    (That a re-run resumes rather than retrains is the recipe's own test above.)"""
    logs = tmp_path / "logs"
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("AMP", None)
    cmd = ["bash", "scripts/ensemble_sparc.sh", os.path.join("data", "spider_cosql", "tiny"), str(logs),
           "--bert", "tiny", "--bert_layers", "2", "--cache_dir", "", "--decoder_size", "32", "--turn_size", "32"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-1500:]
    from text2sql.tensors import has_bf16
    amp = has_bf16("cpu")
    suffix = "_amp" if amp else ""
    members = ["recipe_s3", "recipe_s3_amp" if amp else "recipe_s5", f"recipe_s4{suffix}", f"prevutt3_s4{suffix}"]
    cfgs = {m: json.load(open(logs / m / "config.json")) for m in members}
    assert [cfgs[m]["seed"] for m in members] == [3, 3 if amp else 5, 4, 4]
    assert [cfgs[m]["amp"] for m in members] == [False, amp, amp, amp]
    assert [cfgs[m]["previous_utterances"] for m in members] == [0, 0, 0, 3]
    # measured with the mean of the last layers: MIX=0 for every member
    assert not any(cfgs[m]["bert_mix"] for m in members)
    assert all(len([l for l in open(logs / m / "metrics.jsonl") if '"valid"' in l]) == 16 for m in members)
    report = json.load(open(logs / "ensemble4" / "beam4_turn2" / "eval_dev.json"))
    dec = report["decoding"]
    assert (dec["beam"], dec["turn_beam"]) == (4, 2) and report["questions"] == 44
    assert dec["ensemble"] == [str(logs / m) for m in members]
