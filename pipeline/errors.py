"""The user-facing errors: each message names the key or file and what was expected.

Stage scripts (`pipeline.stage.run_stage`) print them as one line and exit non-zero; any
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class ParamsError(ValueError):
    """A problem in params.yaml, with the offending key named."""


class DatasetError(ValueError):
    """Bad dataset input; the message names the file / key and what was expected."""


class ArtefactError(ValueError):
    """A missing or mismatched upstream artefact (message names the file and the fix)."""


USER_ERRORS = (ParamsError, DatasetError, ArtefactError, FileNotFoundError)
