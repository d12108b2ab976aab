"""Helpers for Crucible jobs: report progress, and find where checkpoints and outputs belong.

    from crucible import progress, checkpoint_dir
    progress(step=10, total=100, loss=0.42)   # shown live by `crucible run` and the agent
"""

import json
import os
import pathlib
import sys

PROGRESS_PREFIX = "##crucible:progress "

__all__ = ["progress", "checkpoint_dir", "output_dir"]


def progress(step=None, total=None, **metrics):
    """Reports progress: a step out of a total, and named numbers (loss, accuracy, tokens_per_s...)."""
    event = {key: float(value) for key, value in metrics.items()}
    if step is not None:
        event["step"] = int(step)
    if total is not None:
        event["total"] = int(total)
    sys.stdout.write(PROGRESS_PREFIX + json.dumps(event) + "\n")
    sys.stdout.flush()


def checkpoint_dir():
    """Where checkpoints go: uploaded while the job runs and restored when it resumes elsewhere."""
    path = pathlib.Path(os.environ.get("CRUCIBLE_CHECKPOINT_DIR", "/workspace/checkpoints"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_dir():
    """Where files the job produces go: kept with its result."""
    path = pathlib.Path("/workspace/outputs")
    path.mkdir(parents=True, exist_ok=True)
    return path
