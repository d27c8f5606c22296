"""Command line: ``python -m text2sql {data,train} ...`` (also installed as ``text2sql``)."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import ConfigError, DataError
from .runs import add_runs_commands


def add_data_commands(sub):
    data = sub.add_parser("data", help="inspect a data set: counts, tokenisation, FROM restoration")
    dsub = data.add_subparsers(dest="data_command", required=True)
    for name, helptext in (("check", "tokenise every gold query both ways and restore FROM-less ones; exits 1 "
                                     "where any item is bad"),
                           ("stats", "the same summary as a table")):
        p = dsub.add_parser(name, help=helptext)
        p.add_argument("--data", default=None,
                       help="a data directory (train.json, dev.json, tables.json) or one split file; "
                            "default: the shipped tiny set")
        p.add_argument("--tables", default=None, help="tables.json, if not beside the data")
        p.add_argument("--split", action="append", default=None,
                       help="split name(s) to check in a directory (default: train and dev)")
        if name == "check":
            p.add_argument("--json", action="store_true", help="print one JSON object")
            p.add_argument("--max_listed", type=int, default=200,
                           help="list at most this many failures per kind (default 200)")
        p.set_defaults(func=run_data_check if name == "check" else run_data_stats)


def _report(args):
    from .data import SHIPPED_DATA
    from .datacheck import check_data
    return check_data(args.data or SHIPPED_DATA, tuple(args.split or ("train", "dev")), args.tables)


def run_data_check(args) -> int:
    from .datacheck import format_table
    report = _report(args)
    # exit 1 where items are bad, so that a script or CI can stop on it (FROM clauses that do not
    # restore are a property of the data, not errors)
    bad = 1 if any(r["errors"] for r in report["splits"].values()) else 0
    if args.json:
        print(json.dumps(report))
        return bad
    for name, r in report["splits"].items():
        print(f"== {name}: {r['path']}")
        for line in r["errors"][:args.max_listed]:
            print(f"error: {line}")
        for line in r["restore_failures"][:args.max_listed]:
            print(f"not restored: {line}")
        n = len(r["restore_failures"]) + len(r["errors"])
        if n > args.max_listed:
            print(f"... {n - args.max_listed} more (use --json for all)")
    print(format_table(report))
    return bad


def run_data_stats(args) -> int:
    from .datacheck import format_table
    print(format_table(_report(args)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="text2sql",
        description="Context-dependent text-to-SQL (SParC / CoSQL / Spider): data tools, training, "
                    "evaluation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_commands(sub)
    from .config import add_train_command
    from .inference import add_evaluate_command, add_predict_command
    add_train_command(sub)
    add_predict_command(sub)
    add_evaluate_command(sub)
    add_runs_commands(sub)
    from .analysis import add_analyse_command
    add_analyse_command(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except DataError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .encoder import EncoderLoadError   # torch is loaded by now, whatever ran
        if not isinstance(e, EncoderLoadError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # a file or folder named on the command line that is not there, or not readable: the
        # path and the reason, not a traceback
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
