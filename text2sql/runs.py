"""``python -m text2sql runs`` and ``compare``: run folders side by side, and against EditSQL.

Both read only what ``train`` and ``evaluate`` write: ``config.json``, ``metrics.jsonl``,
``status.json``, the tensorboard event file names (for the start time), and the ``eval_*.json``
reports that ``evaluate`` leaves in the run folder or one folder below it (``--out RUN/beam4``). A folder that is half written (a run that is
still starting, a last line cut off by a crash) or corrupt (hand-edited, truncated) gets a row that
says so; it never stops the listing. This module imports no torch (the CLI may load it for other
commands' parsers; nothing here needs it), and matplotlib only when ``compare --plot`` draws.

EditSQL's reference comes from its training ``log.txt``: one block per epoch, starting at
``Epoch:\\t0``, with lines such as ``valid gold-passing TOKEN_ACCURACY:\\t90.64`` (see
``parse_editsql_log``). Without a log, the reference is EditSQL's published figures.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field

from .errors import DataError

# EditSQL on the official SParC dev set: the published teacher-forced token accuracy, and the best
# valid string accuracy of its released log (logs_sparc_editsql/log.txt, at its "Epoch: 31").
PUBLISHED = {"token_acc": 90.6, "string_acc": 55.94}
# and its published decoded figures there (question / interaction match, each turn reading its own
# previous prediction); EditSQL's log.txt has no decoded figures, so these hold with --reference too
PUBLISHED_DECODED = {"question_match": 47.2, "interaction_match": 29.5}
DECODED_LABELS = {"question_match": "question match", "interaction_match": "interaction match"}
ACCURACIES = ("token_acc", "string_acc", "keyword_acc", "db_acc")
LABELS = {"token_acc": "token", "string_acc": "string", "keyword_acc": "keyword", "db_acc": "DB"}
# where a run was written, read from or cached, whether it resumed and its note: not what it trained
NOT_CONFIG = {"run_dir", "resume", "logdir", "note", "cache_dir"}
RUN_FILES = ("config.json", "metrics.jsonl", "status.json", "vocab.json", "best.pt", "last.pt")
EVENTS = re.compile(r"^events\.out\.tfevents\.(\d+)")
REPORT = re.compile(r"^eval_\w+\.json$")


@dataclass
class Run:
    path: str
    name: str
    config: dict | None = None
    rows: list = field(default_factory=list)
    status: dict | None = None
    problems: list = field(default_factory=list)
    started: float | None = None
    resumes: list = field(default_factory=list)     # resumes.jsonl: what each resume changed
    reports: list = field(default_factory=list)     # evaluate's reports found in the folder (Report)
    init: dict | None = None     # init.json: the checkpoint an --init_from run started from

    @property
    def offset(self) -> int:
        """Epochs trained before this run's first (an --init_from run's parents'): the plot's shift."""
        v = (self.init or {}).get("offset")
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

    @property
    def split(self) -> str:
        """The split the best figures come from: valid, or train for runs without validation."""
        splits = {r["split"] for r in self.rows}
        return "valid" if "valid" in splits or not splits else "train"

    @property
    def note(self) -> str:
        return str((self.config or {}).get("note") or "")


# ------------------------------------------------------------------------------------------
# reading one run folder
# ------------------------------------------------------------------------------------------
def _read_text(path: str, what: str, problems: list) -> str | None:
    """The file's text, None if it is absent; an unreadable file is recorded as a problem."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        problems.append(f"unreadable: {what}: {e.strerror or e}")
        return None


def _read_json_object(path: str, what: str, problems: list) -> dict | None:
    text = _read_text(path, what, problems)
    if text is None:
        return None
    if not text.strip():
        # train writes both files whole (config.json directly, status.json by rename), so an empty
        # one is a run caught while starting or a disk that filled up
        problems.append(f"incomplete: {what} is empty")
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        problems.append(f"corrupt: {what}: not JSON at line {e.lineno} column {e.colno}")
        return None
    if not isinstance(obj, dict):
        problems.append(f"corrupt: {what}: a JSON {type(obj).__name__}, not an object")
        return None
    return obj


def read_metrics(path: str, problems: list) -> list[dict]:
    """Rows of ``metrics.jsonl``; a last line without its newline is a run cut off mid-write."""
    text = _read_text(path, "metrics.jsonl", problems)
    if text is None:
        return []
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            cut = i == len(lines)           # every complete row ends with "\n"
            problems.append(f"incomplete: metrics.jsonl line {i} cut off" if cut
                            else f"corrupt: metrics.jsonl line {i}: not JSON")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int) or "split" not in row:
            problems.append(f"corrupt: metrics.jsonl line {i}: not a metrics row")
            continue
        rows.append(row)
    return rows


def start_time(path: str, names: list[str]) -> float | None:
    """When the run started, from config.json's mtime and the first event file's name.

    ``train`` writes config.json just before it opens the event file, whose name carries whole
    seconds. The mtime is the finer clock (runs started within one second keep their order) unless
    config.json was rewritten later, by hand or by a copy: then the event file's second is used."""
    stamps = [int(m.group(1)) for m in map(EVENTS.match, names) if m]
    stamp = float(min(stamps)) if stamps else None
    try:
        mtime = os.path.getmtime(os.path.join(path, "config.json"))
    except OSError:
        return stamp
    return mtime if stamp is None or mtime < stamp + 1 else stamp


def load_run(path: str) -> Run:
    """Everything ``runs``/``compare`` know about one folder; problems are recorded, never raised."""
    run = Run(path=path, name=os.path.basename(os.path.normpath(path)))
    try:
        names = os.listdir(path)
    except OSError as e:
        run.problems.append(f"unreadable: folder: {e.strerror or e}")
        return run
    run.config = _read_json_object(os.path.join(path, "config.json"), "config.json", run.problems)
    if run.config is None and "config.json" not in names:
        run.problems.append("incomplete: no config.json")
    run.rows = read_metrics(os.path.join(path, "metrics.jsonl"), run.problems)
    run.status = _read_json_object(os.path.join(path, "status.json"), "status.json", run.problems)
    run.started = start_time(path, names)
    if "init.json" in names:
        run.init = _read_json_object(os.path.join(path, "init.json"), "init.json", run.problems)
    text = _read_text(os.path.join(path, "resumes.jsonl"), "resumes.jsonl", run.problems) or ""
    for i, line in enumerate(text.splitlines(), 1):
        try:
            r = json.loads(line)
            run.resumes.append({"after_epoch": int(r["after_epoch"]), "changed": dict(r["changed"])})
        except (ValueError, KeyError, TypeError):
            run.problems.append(f"corrupt: resumes.jsonl line {i}")
    top = best(run.rows, run.split, "token_acc")          # best.pt is written at this epoch
    end = last(run.rows, run.split, "token_acc")          # and last.pt at this one
    run.reports = read_reports(path, run.problems, None if top is None else top[1],
                               None if end is None else end[1])
    return run


@dataclass
class Report:
    """One ``evaluate`` report of a run: its decoded figures and how they were decoded."""
    path: str                      # relative to the run folder, e.g. beam4/eval_dev.json
    question_match: float
    interaction_match: float
    beam: int | None
    length_penalty: float          # beam search's alpha (0: the plain sum of log-probabilities)
    gold_previous: bool            # each turn read the gold previous query, not its own prediction
    split: str
    ensemble: int                  # models averaged (1: the run alone)
    epoch: int | None              # the checkpoint's epoch, where the report names it
    stale: bool                    # its checkpoint was rewritten after the report: older weights
    raw_weights: bool = False      # a run trained with --ema, decoded with its raw weights (an ablation)
    turn_beam: int = 1             # histories kept per interaction (evaluate --turn_beam)
    metric: str = "official"       # "strict": written before the evaluator followed the official
                                   # script (join conditions and DISTINCT compared; evaluate --rescore)
    checkpoint: str = "best.pt"    # the run's file it decoded (evaluate --run RUN/last.pt)

    @property
    def own(self) -> bool:
        """The run's own figure as EditSQL reports its: alone, on its validation set, each turn
        reading its own previous prediction, with the weights the run validated with, from the
        checkpoint it chose (best.pt; last.pt's report is shown, not taken as the run's figure)."""
        return (self.ensemble == 1 and not self.gold_previous and self.split == "dev"
                and not self.raw_weights and self.checkpoint == "best.pt")

    def describe(self) -> str:
        parts = ["greedy" if (self.beam or 1) <= 1 else f"beam {self.beam}"]
        if self.length_penalty and (self.beam or 1) > 1:
            parts.append(f"length penalty {self.length_penalty:g}")
        if self.turn_beam > 1:
            parts.append(f"turn beam {self.turn_beam}")
        if self.gold_previous:
            parts.append("gold previous")
        if self.raw_weights:
            parts.append("raw weights")
        if self.ensemble > 1:
            parts.append(f"ensemble of {self.ensemble}")
        if self.checkpoint != "best.pt":
            parts.append(self.checkpoint)
        if self.split != "dev":
            parts.append(f"{self.split} split")
        if self.epoch is not None:
            parts.append(f"@{self.epoch}")
        if self.metric != "official":
            parts.append(f"{self.metric} metric")
        if self.stale:
            parts.append(f"stale: {self.checkpoint} is newer")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {**self.__dict__, "own": self.own, "described": self.describe()}


def read_reports(path: str, problems: list, best_epoch: int | None = None,
                 last_epoch: int | None = None) -> list[Report]:
    """``evaluate``'s reports in the run folder and in its subfolders (``--out RUN/NAME``), by path.

    A report of weights the run no longer has is marked stale: training found a new best after it
    was written. A report names the checkpoint's epoch, which is compared with the epoch of the
    best valid token accuracy (where ``best.pt`` was last written: ``best_epoch``); a copied
    folder keeps that right, whatever its files' times. Older reports, which do not name it, are
    stale when they are older than ``best.pt``. A report of ``last.pt`` is compared alike with the
    last evaluated epoch (``last_epoch``), one of another checkpoint with that file's time."""
    found = []
    for sub in [""] + sorted(n for n in _listdir(path) if os.path.isdir(os.path.join(path, n))):
        for name in sorted(_listdir(os.path.join(path, sub))):
            if REPORT.match(name):
                found.append(os.path.join(sub, name) if sub else name)
    out = []
    for rel in found:
        full = os.path.join(path, rel)
        obj = _read_json_object(full, rel, problems)
        if obj is None:
            continue
        qm, im = obj.get("question_match"), obj.get("interaction_match")
        dec = obj.get("decoding") if isinstance(obj.get("decoding"), dict) else {}
        if not (_finite(qm) and _finite(im)):
            problems.append(f"corrupt: {rel}: no question and interaction match")
            continue
        ckpt = _member_checkpoint(path, dec)
        epoch = ckpt.get("epoch") if isinstance(ckpt.get("epoch"), int) else None
        which = ckpt.get("file") if isinstance(ckpt.get("file"), str) and ckpt.get("file") else "best.pt"
        members = dec.get("ensemble")
        at = {"best.pt": best_epoch, "last.pt": last_epoch}.get(which)
        if epoch is not None and at is not None:
            stale = epoch != at
        else:
            try:
                stale = os.path.getmtime(os.path.join(path, which)) > os.path.getmtime(full)
            except OSError:      # no such checkpoint any more, or no report time: nothing to compare
                stale = False
        out.append(Report(path=rel, question_match=float(qm), interaction_match=float(im),
                          beam=dec.get("beam") if isinstance(dec.get("beam"), int) else None,
                          length_penalty=float(dec["length_penalty"]) if _finite(dec.get("length_penalty")) else 0.0,
                          gold_previous=bool(dec.get("use_gold_previous")),
                          split=str(dec.get("split") or "dev"),
                          ensemble=len(members) if isinstance(members, list) and members else 1,
                          epoch=epoch, stale=stale, raw_weights=ckpt.get("weights") == "raw",
                          turn_beam=dec["turn_beam"] if isinstance(dec.get("turn_beam"), int) else 1,
                          metric=str(obj.get("metric") or "strict"), checkpoint=which))
    return out


def _member_checkpoint(path: str, dec: dict) -> dict:
    """The checkpoint record, in a report's ``decoding``, of the model this run folder holds. An
    ensemble report names its first member's checkpoint (``checkpoint``) and the others' in
    order (``ensemble_checkpoints``); kept in another member's folder (``evaluate --run A
    --ensemble B --out B/NAME``), it is judged by B's checkpoint, not by A's. A member is the
    folder where its path is the same folder, or else (a report read from another directory, or
    a copied folder) where the folder names match."""
    first = dec.get("checkpoint") if isinstance(dec.get("checkpoint"), dict) else {}
    members, others = dec.get("ensemble"), dec.get("ensemble_checkpoints")
    if not (isinstance(members, list) and isinstance(others, list) and len(others) == len(members) - 1
            and all(isinstance(m, str) for m in members)):
        return first
    folders = [os.path.dirname(m) if m.endswith(".pt") else m for m in members]
    same = [i for i, f in enumerate(folders) if _same_folder(f, path)]
    if not same:
        name = os.path.basename(os.path.normpath(path))
        same = [i for i, f in enumerate(folders) if os.path.basename(os.path.normpath(f)) == name]
    if not same or same[0] == 0:
        return first
    theirs = others[same[0] - 1]
    return theirs if isinstance(theirs, dict) else {}


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def best_report(run: Run) -> Report | None:
    """The run's best own decoded figure (highest question match, then interaction match; the first
    by path on ties) among reports still current."""
    own = [r for r in run.reports if r.own and not r.stale]
    return max(own, key=lambda r: (r.question_match, r.interaction_match), default=None)


def resumed_with(run: Run) -> str:
    """What resuming changed beyond the epoch count, e.g. ``lr 0.0003->0.0001 after epoch 12``
    (config.json holds the values after the last change)."""
    parts = [f"{k} {_value(a)}->{_value(b)} after epoch {r['after_epoch']}"
             for r in run.resumes for k, (a, b) in r["changed"].items() if k != "epochs"]
    return "; ".join(parts)


def started_from(run: Run) -> str:
    """An --init_from run's start, e.g. ``logs/s13/last.pt (epoch 10)``; '' for any other run."""
    if not run.init:
        return ""
    epoch = run.init.get("epoch")
    return f"{run.init.get('from', '?')}" + (f" (epoch {epoch})" if epoch is not None else "")


def looks_like_run(path: str) -> bool:
    return any(n in RUN_FILES or EVENTS.match(n) for n in _listdir(path))


def find_runs(logdir: str) -> list[Run]:
    """Every run folder directly under ``logdir``, oldest first (folders without a start time last)."""
    if not os.path.isdir(logdir):
        raise DataError("no such directory", file=logdir)
    paths = [os.path.join(logdir, n) for n in sorted(os.listdir(logdir))]
    runs = [load_run(p) for p in paths if os.path.isdir(p) and looks_like_run(p)]
    return sorted(runs, key=lambda r: (r.started is None, r.started or 0.0, r.name))


# ------------------------------------------------------------------------------------------
# status
# ------------------------------------------------------------------------------------------
def pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:      # 0 and negatives would signal process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                       # it exists, under another user
        return True
    except OSError:
        return False
    return True


def lifecycle(run: Run) -> str:
    """running / stopped / finished / failed: ... / diverged: ... from ``status.json``.

    A run killed hard (SIGKILL, out of memory, the machine rebooted) never writes its last status,
    so "running" is believed only while its process is alive on this host."""
    st = run.status
    if st is None:
        return "unknown (no status.json)" if run.rows else "incomplete (no metrics yet)"
    state = st.get("status")
    if state == "running":
        host = st.get("host")
        if host != socket.gethostname():
            return f"running on {host} (not checked)"
        if pid_alive(st.get("pid")):
            return "running"
        return f"stopped (no process {st.get('pid')}; last update {_clock(st.get('updated'))})"
    if state in ("failed", "diverged"):
        return f"{state}: {st.get('error') or 'no error recorded'}"
    if state == "finished":
        return "finished"
    return f"unknown status {state!r}"


def _clock(t) -> str:
    if not isinstance(t, (int, float)) or not math.isfinite(t):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


# ------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------
def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curve(rows: list[dict], split: str, key: str) -> list[tuple[int, float]]:
    """(epoch, value) per evaluation; a resumed run that re-evaluated an epoch keeps the later row."""
    by_epoch = {r["epoch"]: r[key] for r in rows if r.get("split") == split and _finite(r.get(key))}
    return sorted(by_epoch.items())


def best(rows, split, key):
    """(value, epoch) of the highest figure, the earliest epoch on ties; None without any."""
    pts = curve(rows, split, key)
    if not pts:
        return None
    epoch, value = max(pts, key=lambda p: (p[1], -p[0]))
    return value, epoch


def last(rows, split, key):
    pts = curve(rows, split, key)
    return (pts[-1][1], pts[-1][0]) if pts else None


def epochs_done(run: Run) -> int:
    """Epochs trained: status.json's count (it is rewritten every epoch), else the last evaluated."""
    st_epoch = (run.status or {}).get("epoch")
    if isinstance(st_epoch, int):
        return st_epoch
    return max((r["epoch"] for r in run.rows), default=0)


def config_defaults() -> dict:
    from dataclasses import MISSING, fields
    from .config import TrainConfig
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def config_diff(runs: list[Run]) -> list[str]:
    """Config keys whose values are not the same in every listed run that has a config."""
    configs = [r.config for r in runs if r.config is not None]
    if len(configs) < 2:
        return []
    keys = sorted(set().union(*configs) - NOT_CONFIG)
    defaults = config_defaults()

    def value(c, k):
        # a run from before a flag existed trained with what is now its default; a key that is
        # not a flag at all (a foreign config) differs from every value
        if k in c:
            return json.dumps(c[k], sort_keys=True)
        return json.dumps(defaults[k], sort_keys=True) if k in defaults else "<absent>"
    return [k for k in keys if len({value(c, k) for c in configs}) > 1]


def summary(run: Run, diff_keys: list[str]) -> dict:
    """One run as plain data: what the tables print and what ``--json`` dumps."""
    split = run.split
    cfg = run.config or {}
    top = best_report(run)
    return {
        "name": run.name, "path": run.path, "started": run.started, "note": run.note,
        "epochs_done": epochs_done(run), "epochs": cfg.get("epochs"), "split": split,
        "best": {k: _pair(best(run.rows, split, k)) for k in ACCURACIES},
        "last": {k: _pair(last(run.rows, split, k)) for k in ACCURACIES},
        "config": {k: cfg.get(k, "-") for k in diff_keys} if run.config is not None else None,
        "resumed_with": resumed_with(run),
        "started_from": started_from(run), "epoch_offset": run.offset,
        "decoded": [r.as_dict() for r in run.reports],
        "best_decoded": None if top is None else top.as_dict(),
        "status": lifecycle(run), "problems": list(run.problems),
    }


def _pair(p):
    return None if p is None else {"value": p[0], "epoch": p[1]}


# ------------------------------------------------------------------------------------------
# EditSQL's log.txt
# ------------------------------------------------------------------------------------------
# EditSQL's metric names -> ours. Its accuracies are percentages already (``construct_averages``
# multiplies by 100); so is its LOSS, whose ``metric != "loss"`` test never matches the enum: it is
# a per-utterance sum times 100, not on our scale, hence its own key.
EDITSQL_KEYS = {"TOKEN_ACCURACY": "token_acc", "STRING_ACCURACY": "string_acc", "LOSS": "editsql_loss"}
_EPOCH = re.compile(r"^\s*epoch\s*[:=]\s*(\d+)\s*$", re.I)
_METRIC = re.compile(r"^\s*(train final gold-passing|valid gold-passing)\s+([A-Za-z_]+)\s*[:=]\s*(\S+)\s*$", re.I)
_SPLITS = {"train final gold-passing": "train", "valid gold-passing": "valid"}


def parse_editsql_log(path: str) -> list[dict]:
    """Rows in ``metrics.jsonl``'s shape, one per split per epoch, from EditSQL's ``log.txt``.

    EditSQL counts epochs from 0 and logs after each; ``train`` counts from 1, so EditSQL's
    ``Epoch: 31`` is our epoch 32 (both mean "after 32 passes over the data"). Lines that are not
    epoch markers or gold-passing metrics (patience, save file, learning-rate coefficient) are
    skipped; ``inf`` losses are kept as inf. Accuracies logged as fractions are scaled to percent.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"cannot read the EditSQL log: {e.strerror or e}", file=path) from None
    rows: dict[tuple[int, str], dict] = {}
    epoch = None
    for line in lines:
        m = _EPOCH.match(line)
        if m:
            epoch = int(m.group(1)) + 1
            continue
        m = _METRIC.match(line)
        if not m or epoch is None:
            continue
        key = EDITSQL_KEYS.get(m.group(2).upper(), m.group(2).lower())
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        split = _SPLITS[" ".join(m.group(1).lower().split())]
        rows.setdefault((epoch, split), {"epoch": epoch, "editsql_epoch": epoch - 1, "split": split})[key] = value
    out = [rows[k] for k in sorted(rows)]
    if not any(r["split"] == "valid" and "token_acc" in r for r in out):
        raise DataError("no 'Epoch:' blocks with 'valid gold-passing TOKEN_ACCURACY' lines; "
                        "not an EditSQL log.txt", file=path)
    return _as_percent(out)


def _as_percent(rows: list[dict]) -> list[dict]:
    accs = [r[k] for r in rows for k in ("token_acc", "string_acc") if _finite(r.get(k))]
    if accs and max(accs) <= 1.0:       # fractions: no real log stays at or below 1% throughout
        for r in rows:
            for k in ("token_acc", "string_acc"):
                if _finite(r.get(k)):
                    r[k] = 100.0 * r[k]
    return rows


@dataclass
class Reference:
    """What runs are judged against: EditSQL's log curve, or its published figures."""
    label: str
    targets: dict                 # metric -> the figure to beat
    rows: list = field(default_factory=list)
    source: str = ""

    def describe(self) -> str:
        if not self.rows:
            return (f"reference: EditSQL published, valid token {PUBLISHED['token_acc']}, string "
                    f"{PUBLISHED['string_acc']} (no --reference log given)")
        n = max(r["epoch"] for r in self.rows)
        parts = [f"{LABELS[k]} {v:.2f} at epoch {best(self.rows, 'valid', k)[1]}"
                 for k, v in self.targets.items()]
        return (f"reference: {self.source}, {n} epochs; best valid " + ", ".join(parts) +
                " (epochs counted from 1; EditSQL's log counts from 0)")


def load_reference(path: str | None) -> Reference:
    if not path:
        return Reference("EditSQL published", dict(PUBLISHED))
    rows = parse_editsql_log(path)
    targets = {k: best(rows, "valid", k)[0] for k in ("token_acc", "string_acc") if best(rows, "valid", k)}
    return Reference("EditSQL (log)", targets, rows, source=path)


def verdict(value, target) -> str:
    """'beats by 0.31' / 'misses by 17.40' / 'ties', on the 2-decimal figures both sides print."""
    if value is None or target is None:
        return "-"
    d = round(value - target, 2)
    if d > 0:
        return f"beats by {d:.2f}"
    if d < 0:
        return f"misses by {-d:.2f}"
    return "ties"


# ------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns; the last column is left ragged so long statuses do not widen others."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    widths[-1] = 0

    def fmt(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * len(h) for h in header])] + [fmt(r) for r in rows])


def _fig(pair) -> str:
    return "-" if pair is None else f"{pair['value']:.2f} @{pair['epoch']}"


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 3] + "..."


def status_cell(s: dict) -> str:
    """The status (a failed run's long error shortened; ``--json`` has it whole), then any problems."""
    return "; ".join([_short(s["status"], 100)] + s["problems"])


def runs_table(summaries: list[dict], diff_keys: list[str]) -> str:
    header = ["run", "started", "note", "config", "epochs", "split", "best token", "best string",
              "best keyword", "best DB", "decoded QM / IM", "status"]
    rows = []
    for s in summaries:
        if s["config"] is None:
            cfg = "?"
        else:
            cfg = " ".join(f"{k}={_value(s['config'][k])}" for k in diff_keys) or "-"
        epochs = f"{s['epochs_done']}/{s['epochs']}" if s["epochs"] is not None else str(s["epochs_done"])
        split = s["split"] if s["split"] == "valid" else "train (no valid)"
        rows.append([s["name"], _clock(s["started"]), _short(s["note"], 30) or "-", cfg, epochs, split]
                    + [_fig(s["best"][k]) for k in ACCURACIES] + [_decoded(s["best_decoded"]), status_cell(s)])
    return table(header, rows)


def _decoded(rep: dict | None, full: bool = False) -> str:
    """'35.16 / 17.54' (question / interaction match); with ``full``, how it was decoded too."""
    if rep is None:
        return "-"
    figs = f"{rep['question_match']:.2f} / {rep['interaction_match']:.2f}"
    return f"{figs} ({rep['described']})" if full else figs


def decoded_verdicts(s: dict) -> dict:
    """The run's best own decoded figures against EditSQL's published ones."""
    rep = s["best_decoded"]
    return {k: verdict(None if rep is None else rep[k], t) for k, t in PUBLISHED_DECODED.items()}


def _value(v) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) or v is None else str(v)


def compare_table(summaries: list[dict], diff_keys: list[str], ref: Reference) -> str:
    """One column per run (and one for the reference log), one row per figure."""
    rows = []

    def row(label, cells, ref_cell=""):
        rows.append([label] + cells + ([ref_cell] if ref.rows else []))
    row("note", [s["note"] or "-" for s in summaries])
    for k in diff_keys:
        row(f"config {k}", [_value(s["config"][k]) if s["config"] is not None else "?" for s in summaries])
    if any(s["started_from"] for s in summaries):
        row("started from (--init_from)", [s["started_from"] or "-" for s in summaries])
    if any(s["resumed_with"] for s in summaries):
        row("resumed with", [s["resumed_with"] or "-" for s in summaries])
    row("status", [status_cell(s) for s in summaries])
    row("epochs", [f"{s['epochs_done']}/{s['epochs']}" for s in summaries],
        str(max(r["epoch"] for r in ref.rows)) if ref.rows else "")
    for which, pick in (("best", best), ("last", last)):
        for k in ACCURACIES:
            row(f"{which} {LABELS[k]} acc @epoch", [_fig(s[which][k]) for s in summaries],
                _fig(_pair(pick(ref.rows, "valid", k))))
    for k, target in ref.targets.items():
        row(f"best {LABELS[k]} vs EditSQL {target:.2f}",
            [verdict((s["best"][k] or {}).get("value"), target) for s in summaries])
    # decoded figures, one row per report path found in any of the runs (evaluate --out RUN/NAME)
    paths = sorted({d["path"] for s in summaries for d in s["decoded"]})
    for path in paths:
        row(f"decoded QM / IM {path}",
            [_decoded(next((d for d in s["decoded"] if d["path"] == path), None), full=True) for s in summaries])
    if paths:
        for k, target in PUBLISHED_DECODED.items():
            row(f"best {DECODED_LABELS[k]} vs EditSQL {target:.1f}", [decoded_verdicts(s)[k] for s in summaries])
    header = ["figure"] + [s["name"] for s in summaries] + ([ref.label] if ref.rows else [])
    return table(header, rows)


# ------------------------------------------------------------------------------------------
# the plot
# ------------------------------------------------------------------------------------------
def plot_compare(runs: list[Run], ref: Reference, out: str) -> str:
    """Two panels, valid token and string accuracy per epoch, one line per run (and a dashed one of
    the raw weights for a run trained with ``--ema``), EditSQL's line; a third, decoded question
    match per epoch against EditSQL's published one, where a run trained with ``--decode_valid``."""
    import matplotlib
    matplotlib.use("Agg")                  # no display on a training machine
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    decoded = any(curve(r.rows, "valid_decoded", "question_match") for r in runs)
    keys = ("token_acc", "string_acc") + (("question_match",) if decoded else ())
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 5.2), layout="constrained")
    # an --init_from run's epochs continue its parent's (init.json's offset)
    run_epochs = [e + r.offset for r in runs for e, _ in curve(r.rows, r.split, "token_acc")]
    xmax = max(run_epochs, default=None)
    for ax, key in zip(axes, keys):
        if key == "question_match":
            _plot_decoded(ax, runs, xmax)
            continue
        for r in runs:
            pts = curve(r.rows, r.split, key)
            label = (r.name + (f" ({r.note})" if r.note else "") + ("" if r.split == "valid" else " [train]")
                     + _after(r))
            line, = ax.plot([p[0] + r.offset for p in pts], [p[1] for p in pts], marker="o", markersize=3.5,
                            label=label)
            raw = curve(r.rows, "valid_raw", key) if r.split == "valid" else []
            if raw:      # an --ema run: its raw weights dashed beside the average it validates with
                ax.plot([p[0] + r.offset for p in raw], [p[1] for p in raw], color=line.get_color(), linestyle="--",
                        linewidth=1, label=f"{r.name}, raw weights (without --ema's average)")
        _draw_reference(ax, ref, key, xmax)
        ax.set_title(f"valid {LABELS[key]} accuracy (teacher-forced)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{LABELS[key]} accuracy, %")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if xmax:
            ax.set_xlim(0.5, xmax + 0.5)
        # below the axes, so that no legend ever covers a curve
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=9, frameon=False)
    fig.suptitle("Validation accuracy per epoch against " + (
        f"EditSQL's log ({os.path.basename(ref.source)})" if ref.rows else "EditSQL's published figures"))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _after(run: Run) -> str:
    return f", --init_from after epoch {run.offset}" if run.offset else ""


def _plot_decoded(ax, runs: list[Run], xmax):
    """Decoded question match per epoch (``--decode_valid``), each turn reading its own previous
    prediction, with EditSQL's published figure."""
    from matplotlib.ticker import MaxNLocator
    for r in runs:
        pts = curve(r.rows, "valid_decoded", "question_match")
        beams = {row.get("beam") for row in r.rows if row.get("split") == "valid_decoded"}
        how = "greedy" if beams == {1} else "beam " + "/".join(str(b) for b in sorted(beams, key=str))
        ax.plot([p[0] + r.offset for p in pts], [p[1] for p in pts], marker="o", markersize=3.5,
                label=(f"{r.name} ({how})" if pts else f"{r.name} (no --decode_valid)") + _after(r))
    target = PUBLISHED_DECODED["question_match"]
    ax.axhline(target, color="black", linewidth=1, linestyle=":", label=f"EditSQL published: {target:.1f}")
    ax.set_title("valid question match (decoded, --decode_valid)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("question match, %")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if xmax:
        ax.set_xlim(0.5, xmax + 0.5)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=9, frameon=False)


def _draw_reference(ax, ref: Reference, key: str, xmax):
    target = ref.targets.get(key)
    pts = curve(ref.rows, "valid", key)
    if pts:
        shown = [p for p in pts if xmax is None or p[0] <= xmax]
        note = "" if len(shown) == len(pts) else f", first {len(shown)} of {len(pts)} epochs shown"
        ax.plot([p[0] for p in shown], [p[1] for p in shown], color="0.45", linestyle="--",
                label=f"EditSQL valid, log.txt{note}")
    if target is not None:
        what = "best in log" if ref.rows else ("published" if key == "token_acc" else "best in its released log")
        ax.axhline(target, color="black", linewidth=1, linestyle=":", label=f"EditSQL {what}: {target:.2f}")
        # the figure on the line itself too, with room above it so the frame does not hide the line
        ax.annotate(f"{target:.2f}", (1, target), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                    textcoords="offset points", ha="right", va="bottom", fontsize=8)
        low, high = ax.get_ylim()
        ax.set_ylim(low, max(high, target + 0.08 * (target - low)))


# ------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------
def _strict(obj):
    """The object with non-finite floats (EditSQL's ``inf`` losses, a NaN loss) as strings: strict
    JSON has no Infinity or NaN, and ``--json`` output is read by other tools."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def run_runs(args) -> int:
    runs = find_runs(args.logdir)
    keys = config_diff(runs)
    summaries = [summary(r, keys) for r in runs]
    if args.json:
        print(json.dumps(_strict({"logdir": args.logdir, "config_keys_that_differ": keys, "runs": summaries})))
        return 0
    if not runs:
        print(f"no run folders in {args.logdir}")
        return 0
    print(runs_table(summaries, keys))
    return 0


def run_compare(args) -> int:
    for p in args.runs:
        if not os.path.isdir(p):
            raise DataError("no such run folder", file=p)
    runs = [load_run(p) for p in args.runs]
    ref = load_reference(args.reference)
    keys = config_diff(runs)
    summaries = [summary(r, keys) for r in runs]
    plot = plot_compare(runs, ref, args.plot) if args.plot else None
    if args.json:
        print(json.dumps(_strict({
            "runs": summaries, "config_keys_that_differ": keys,
            "reference": {"label": ref.label, "source": ref.source, "targets": ref.targets, "rows": ref.rows},
            "decoded_targets": PUBLISHED_DECODED,
            "verdicts": {s["name"]: {**{k: verdict((s["best"][k] or {}).get("value"), t)
                                        for k, t in ref.targets.items()}, **decoded_verdicts(s)}
                         for s in summaries},
            "plot": plot})))
        return 0
    print(ref.describe())
    no_valid = [s["name"] for s in summaries if s["split"] != "valid"]
    if no_valid:
        print(f"no validation rows in {', '.join(no_valid)}: their figures are training accuracies")
    print(compare_table(summaries, keys, ref))
    if plot:
        print(f"plot: {plot}")
    return 0


def add_runs_commands(sub):
    p = sub.add_parser("runs", help="list run folders: note, config differences, best valid figures, status")
    p.add_argument("--logdir", default="logs", help="the folder that holds run folders (default: logs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_runs)
    p = sub.add_parser("compare", help="runs side by side against EditSQL's reference; --plot draws the curves")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--reference", default=None,
                   help="EditSQL's log.txt: its valid curve and best figures become the reference "
                        f"(default: the published {PUBLISHED['token_acc']} token accuracy)")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="write valid token and string accuracy per epoch, one line per run, to this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_compare)
