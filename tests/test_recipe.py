"""scripts/train_sparc.sh, the shipped SParC recipe, end to end on the shipped tiny data with a tiny
random BERT: both learning-rate phases, the two beam-4 evaluations, and a re-run that trains nothing."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def script_env() -> dict:
    """The scripts' environment: this interpreter first on PATH, one thread, no GPU, and AMP
    unset, so that each script's own precision default is what runs."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("AMP", None)
    return env


def test_train_sparc_recipe_runs_both_phases_and_resumes(tmp_path):
    run = tmp_path / "run"
    env = script_env()
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
    # float32 on a CPU, even one with bf16 units, unless AMP=1 (scripts/ensemble_sparc.sh sets it
    # for its members: the test below)
    assert cfg["amp"] is False
    # the average validates; the raw weights are logged beside it
    assert len([l for l in open(run / "metrics.jsonl") if '"valid_raw"' in l]) == 16
    report = json.load(open(run / "beam4" / "eval_dev.json"))
    assert report["decoding"]["beam"] == 4 and report["questions"] == 44
    turns = json.load(open(run / "beam4_turn2" / "eval_dev.json"))["decoding"]
    assert (turns["beam"], turns["turn_beam"]) == (4, 2)
    # dev decoded greedily after every epoch; the best-match epoch decoded too where it is not best.pt's
    assert cfg["decode_valid"] == 1
    assert len([l for l in open(run / "metrics.jsonl") if '"valid_decoded"' in l]) == 16
    import torch
    epochs = [torch.load(run / f, map_location="cpu", weights_only=False)["epoch"] for f in ("best.pt", "best_match.pt")]
    for sub in ("best_match_beam4", "best_match_turn2"):
        if epochs[0] == epochs[1]:
            assert not (run / sub).exists()
        else:
            ck = json.load(open(run / sub / "eval_dev.json"))["decoding"]["checkpoint"]
            assert (ck["file"], ck["epoch"]) == ("best_match.pt", epochs[1])
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
    env = script_env()
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


def test_the_recipe_script_runs_to_its_end_when_its_file_is_rewritten_during_a_run(tmp_path):
    """A run takes hours, and bash reads a script as it goes: rewritten in place meanwhile (as some
    editors and tools write), the old script went on at a byte offset of the new file when a phase
    ended (two runs of the twenty-first session stopped that way after their first phase). The
    script is one block, parsed whole before it runs: here its file is overwritten with `exit 3`
    lines while its first evaluation runs, and both evaluations still happen."""
    import shutil
    import time
    if not os.path.isdir("/proc/self"):
        import pytest
        pytest.skip("needs /proc to see the script's child process")
    run = tmp_path / "run"
    env = script_env()
    data = os.path.join("data", "spider_cosql", "tiny")
    p = subprocess.run([sys.executable, "-m", "text2sql", "train", "--data", data, "--bert", "tiny", "--epochs", "1",
                        "--batch_size", "4", "--decoder_size", "32", "--turn_size", "32", "--cache_dir", "",
                        "--train_eval_size", "0", "--run_dir", str(run)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-1500:]
    status = json.load(open(run / "status.json"))
    status["epoch"] = 16                      # both phases count as done: the script only evaluates
    (run / "status.json").write_text(json.dumps(status))
    script = tmp_path / "train_sparc.sh"
    shutil.copy(os.path.join(ROOT, "scripts", "train_sparc.sh"), script)
    proc = subprocess.Popen(["bash", str(script), data, str(run)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def evaluating() -> bool:
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if ppid == proc.pid and b"evaluate" in cmd:
                return True
        return False
    deadline = time.time() + 120
    while not evaluating():
        assert proc.poll() is None and time.time() < deadline, "the first evaluation never started"
        time.sleep(0.05)
    with open(script, "w") as f:              # in place: the same file bash has open
        f.write("exit 3\n" * 2000)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-1500:]
    assert json.load(open(run / "beam4" / "eval_dev.json"))["decoding"]["beam"] == 4
    assert json.load(open(run / "beam4_turn2" / "eval_dev.json"))["decoding"]["turn_beam"] == 2
