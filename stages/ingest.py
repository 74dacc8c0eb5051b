"""Stage ingest: read data.expert / data.suboptimal into the canonical datasets.

Writes data/ingested/expert.h5 (the selected expert episodes), data/ingested/suboptimal.h5
(the suboptimal sources only; consumers add the demonstrations themselves when
data.expert.add_to_suboptimal) and data/ingested/summary.json (provenance: counts, returns,
sources, content hashes). Everything is read and validated before anything is written.
"""
from __future__ import annotations

import logging
import time

from pipeline.config import load_params
from pipeline.ingest import ingest, write_ingested
from pipeline.stage import run_stage

OUT = "data/ingested"
log = logging.getLogger("ingest")


def main() -> None:
    start = time.time()
    params = load_params()
    result = ingest(params.data, params.env.id, params.seed)
    write_ingested(result, OUT)
    for name, part in result.summary.items():
        log.info("%s: %d episodes, %d transitions, return mean %.1f [%.1f, %.1f]", name, part["episodes"],
                 part["transitions"], part["return_mean"], part["return_min"], part["return_max"])
    log.info("wrote %s/{expert.h5,suboptimal.h5,summary.json} in %.1fs", OUT, time.time() - start)


if __name__ == "__main__":
    run_stage(main, __doc__)
