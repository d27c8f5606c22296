"""Rewrites the checkpoints of runs trained before frozen encoders were left out of them.

    python scripts/slim_checkpoints.py RUN_DIR [RUN_DIR ...]

Since this change, a ``--fix_bert`` run's ``best.pt``, ``best_match.pt`` and ``last.pt`` hold no
copy of the encoder's weights when they are the ones ``--bert`` loads (the checkpoint names them
by a SHA-256 that loading checks), and ``best.pt`` / ``best_match.pt`` no optimiser state; older
runs still load as they are. This rewrites an older run's checkpoints in the new form (each
written to a temporary file and renamed), leaving alone a checkpoint whose encoder trained or
whose frozen weights came from another run (``--init_from``). The recipe's frozen MiniLM run:
186 MB a checkpoint before, 95 MB for last.pt and 48 MB for best.pt after.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from text2sql.errors import DataError  # noqa: E402
from text2sql.train import slim_checkpoint  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (every .pt in them but debug checkpoints) or checkpoints")
    args = ap.parse_args(argv)
    paths = []
    for r in args.runs:
        paths += [r] if r.endswith(".pt") else sorted(p for p in glob.glob(os.path.join(r, "*.pt"))
                                                       if not os.path.basename(p).startswith("debug_"))
    if not paths:
        print("no checkpoints found", file=sys.stderr)
        return 1
    saved, failed = 0, 0
    for p in paths:
        try:
            before, after, what = slim_checkpoint(p)
        except (DataError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        saved += before - after
        print(f"{p}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB ({what})")
    print(f"{saved / 1e6:.1f} MB freed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
