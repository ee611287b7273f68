"""Where a job's work runs: in this process, or spread over a Ray cluster, behind one interface.

    JobRunner                 dedup(items) -> decisions, evaluate(items) -> evaluations,
                              both streamed in input order; generate(job) -> events; close()
    InProcessRunner           the single-machine greedy filter, one warm R pool, the pipeline
    RayRunner                 blocks of the greedy filter as Ray tasks; one R-pool actor per node;
                              cells on one generation actor per node, one dedup owner actor
    open_runner(ray=None)     the one a command asked for (`--ray auto|ADDRESS`)

Commands choose a runner and stream files through it; the runner never reads or writes files.
"""

from service.runners.base import EvalItem, JobRunner, RunnerUnavailable, open_runner
from service.runners.local import InProcessRunner

__all__ = ["EvalItem", "InProcessRunner", "JobRunner", "RunnerUnavailable", "open_runner"]
