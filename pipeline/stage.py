"""What every stage script shares: clear errors instead of tracebacks, and logging."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

import h5py  # noqa: F401  (imported early: h5py and torch loading order matters on some builds)

from pipeline.config import load_params
from pipeline.errors import USER_ERRORS


def stage_parser(description: str) -> argparse.ArgumentParser:
    """The command line of a stage script: its docstring as the ``--help`` text."""
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def run_stage(main: Callable[[], None], description: str | None = None) -> None:
    """Run a stage's main; user-facing errors print one clear line and exit 1.

    params.yaml is checked (`pipeline.config.load_params`) before ``main`` runs, so a bad param is
    refused before any work, before a missing input is reported and before the stage's own
    command line (improve's ``--algo``) is looked at.

    With ``description`` (the stage's docstring) the command line is parsed first, so ``--help``
    prints usage and exits before anything is read or written. Outputs are written atomically
    by the library, so a failure leaves no partial artefact.
    """
    if description is not None:
        stage_parser(description).parse_args()
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        if not {"-h", "--help"} & set(sys.argv[1:]):   # a stage's own --help (improve's) reads nothing
            load_params()  # every stage reads params.yaml: refuse a bad one before any work, whatever the stage
        main()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
