"""Where this process stands among the processes a launcher started (torchrun, accelerate launch):
its rank, how many there are, and the GPU that is its own.

The data-preparation stages share work through the file system, not torch.distributed: each
process takes its share by rank and leaves it on disk, so a launcher's environment is all they read.
"""

from __future__ import annotations

import os

import torch


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (torchrun / accelerate launch set both)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device() -> str:
    """``cuda:LOCAL_RANK`` when there is a GPU (each process of a node on its own), else ``cpu``."""
    return f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
