"""Plot validation curves of one or more runs from their metrics.jsonl (needs matplotlib).

    python scripts/plot_curves.py RUN_DIR [RUN_DIR ...] --out curves.png [--label NAME ...]
"""
import argparse
import json
import os


def load(run_dir):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if line.strip()]
    return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "valid"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--label", action="append", default=None)
    p.add_argument("--reference", type=float, default=90.6, help="EditSQL's SParC dev token accuracy")
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k, run in enumerate(args.runs):
        label = args.label[k] if args.label and k < len(args.label) else os.path.basename(run.rstrip("/"))
        train, valid = load(run)
        for ax, key in zip(axes, ("token_acc", "string_acc", "loss")):
            ax.plot([r["epoch"] for r in valid], [r[key] for r in valid], marker="o", label=f"{label} valid")
            ax.plot([r["epoch"] for r in train], [r[key] for r in train], linestyle="--", label=f"{label} train")
            ax.set_title(key)
            ax.set_xlabel("epoch")
    axes[0].axhline(args.reference, color="grey", linestyle=":", label=f"EditSQL {args.reference}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(args.out)


if __name__ == "__main__":
    main()
