"""Beam's Python job service for the portable runner on one machine, with N SDK workers per job.

    python -m pipelines.local_job_service --port 8099            # then, per job:
    python -m pipelines.image_text ... --runner=PortableRunner --job_endpoint=localhost:8099 \\
        --environment_type=EXTERNAL --environment_config=localhost:50000 --direct_num_workers=2

Beam's ``local_job_service_main`` runs each job with ``FnApiRunner().run_via_runner_api(proto,
options)``, which never reads ``direct_num_workers`` (only ``FnApiRunner.run_pipeline`` does): it
drives ONE SDK worker whatever ``--sdk_worker_parallelism`` says. This entry point passes the job's
``--direct_num_workers`` on, so the EXTERNAL pool starts that many workers and every stage's input
is split over them, as a Flink or Spark runner with parallelism N would do. It is how the tests and
``bench/bench_scale.py`` run the Fn API path with several workers here; on a cluster use the
runner's own job server.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence


def patch_worker_count() -> None:
    """Make the job service's FnApiRunner honour the job's ``--direct_num_workers``."""
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    original = fn_runner.FnApiRunner.run_via_runner_api
    if getattr(original, "_curation_patched", False):
        return

    def run_via_runner_api(self, pipeline_proto, options):  # noqa: ANN001
        self._num_workers = int(options.view_as(DirectOptions).direct_num_workers or 1)  # a string in this path
        return original(self, pipeline_proto, options)

    run_via_runner_api._curation_patched = True  # type: ignore[attr-defined]
    fn_runner.FnApiRunner.run_via_runner_api = run_via_runner_api


def main(argv: Sequence[str] | None = None) -> None:
    from apache_beam.runners.portability import local_job_service_main

    patch_worker_count()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly when the process group is ended
    local_job_service_main.run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
