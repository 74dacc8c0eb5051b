"""Embedded default datasets (`embedded:<name>`), built offline from committed actors.

Placeholder until the embedded-default issue lands.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets import DatasetError

EMBEDDED_NAMES = ("hopper/expert", "hopper/mixed")


def ensure_embedded(name: str) -> tuple[str, Path]:
    """Build (once, cached) the embedded dataset ``name``; return (minari dataset id, datasets root)."""
    raise DatasetError(f"embedded:{name}: the embedded default datasets are not built yet")
