"""Stage report: data/report/index.html, a self-contained page (PNGs beside it) readable offline."""
from __future__ import annotations

import logging

from pipeline.config import load_params
from pipeline.report import build_report
from pipeline.stage import run_stage

log = logging.getLogger("report")


def main() -> None:
    load_params()  # the page shows params.yaml verbatim: refuse to present an invalid one
    index = build_report()
    log.info("wrote %s", index)


if __name__ == "__main__":
    run_stage(main, __doc__)
