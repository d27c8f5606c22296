"""Run configuration: one dataclass per run, saved as ``config.json`` beside its checkpoints."""
from __future__ import annotations


def add_train_command(sub):
    pass
