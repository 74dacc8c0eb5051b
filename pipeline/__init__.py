"""Offline imitation-learning pipeline: CSIL behaviour cloning, coherent reward,
ensemble dynamics and offline policy improvement over D4RL-style datasets."""

__version__ = "0.1.0"

import torch as _torch

# Adam's second-moment state for the HetStat variance head underflows into denormal floats
# within ~1k steps; on x86 CPUs every op touching them then runs ~25x slower (measured:
# 115 -> 4 BC updates/s). Flushing denormals to zero changes no result that matters.
_torch.set_flush_denormal(True)
