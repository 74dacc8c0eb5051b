"""Offline imitation-learning pipeline: CSIL behaviour cloning, coherent reward,
ensemble dynamics and offline policy improvement over D4RL-style datasets."""

__version__ = "0.1.0"
