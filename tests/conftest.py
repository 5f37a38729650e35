"""Suite-wide settings."""
from __future__ import annotations

import os

import torch

# One intra-op thread per test process: the suite starts subprocesses (Hub clients, DDP ranks) next to itself on
# small CPUs, and OpenMP threads that outnumber the cores spin instead of working (seconds become minutes).
torch.set_num_threads(1)
os.environ.setdefault('OMP_NUM_THREADS', '1')
