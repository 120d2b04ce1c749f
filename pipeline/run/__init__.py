"""A certify job from configuration to summary: prepare it (:mod:`.prepare`), run its units in this
process (:mod:`.local`) or on Ray (:mod:`.ray_runner`, with :mod:`.pool`, the only Ray importer with
train), one unit per worker call (:mod:`.worker`), report (:mod:`.report`). Ray is not imported here:
``from rscert.run.ray_runner import run_ray`` where it is wanted."""

from rscert.run.local import run_local
from rscert.run.prepare import Job, prepare
from rscert.run.report import report, summarize

__all__ = ["Job", "prepare", "report", "run_local", "summarize"]
