"""What every stage script shares: clear errors instead of tracebacks, and logging."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

import h5py  # noqa: F401  (imported early: h5py and torch loading order matters on some builds)

from pipeline.config import ParamsError
from pipeline.datasets import DatasetError


class ArtefactError(ValueError):
    """A missing or mismatched upstream artefact (message names the file and the fix)."""


USER_ERRORS = (ParamsError, DatasetError, ArtefactError, FileNotFoundError)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; user-facing errors print one clear line and exit 1.

    Outputs are written atomically by the library, so a failure leaves no partial artefact.
    """
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        main()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
