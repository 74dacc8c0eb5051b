"""Which params.yaml keys a process reads: the check that dvc.yaml declares every one a stage uses.

With ``PIPELINE_PARAMS_TRACE=<file>`` set, `pipeline.config.load_params` hands out a `Params`
tree whose sections record each leaf key read (``bc.lr``, ``env.id``, ``seed``) and append it,
once per process, to ``<file>`` as ``<script>\t<dotted key>``. Without it nothing changes.
tests/test_pipeline.py runs `dvc repro` with it and compares each stage's keys with its
``params:`` in dvc.yaml.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, TypeVar

TRACE_ENV = "PIPELINE_PARAMS_TRACE"
T = TypeVar("T")

_prefixes: dict[int, str] = {}      # id(section) -> its dotted prefix ("" for the root, "improve.awr.")
_recorded: set[str] = set()
_traced_classes: dict[type, type] = {}


def _record(key: str) -> None:
    if key in _recorded:
        return
    _recorded.add(key)
    with open(os.environ[TRACE_ENV], "a") as f:
        f.write(f"{sys.argv[0]}\t{key}\n")


def _traced_getattribute(self: Any, name: str) -> Any:
    value = super(type(self), self).__getattribute__(name)
    if not name.startswith("_"):
        prefix = _prefixes.get(id(self))
        if prefix is not None and name in type(self).__dataclass_fields__ and not dataclasses.is_dataclass(value):
            _record(prefix + name)
    return value


def _traced_class(cls: type) -> type:
    if cls not in _traced_classes:
        # __slots__ = (): same layout as ``cls``, so an instance's __class__ can be swapped in place
        _traced_classes[cls] = type(cls.__name__, (cls,), {"__slots__": (), "__getattribute__": _traced_getattribute,
                                                           "__qualname__": cls.__qualname__})
    return _traced_classes[cls]


def _trace(section: Any, prefix: str) -> None:
    for field in dataclasses.fields(section):
        value = object.__getattribute__(section, field.name)
        if dataclasses.is_dataclass(value):
            _trace(value, f"{prefix}{field.name}.")
    _prefixes[id(section)] = prefix
    object.__setattr__(section, "__class__", _traced_class(type(section)))


def trace_reads(params: T) -> T:
    """``params`` itself, recording its leaf reads when ``PIPELINE_PARAMS_TRACE`` is set."""
    if os.environ.get(TRACE_ENV):
        _trace(params, "")
    return params
