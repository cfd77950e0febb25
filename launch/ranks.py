"""N ranks of a Python command on this machine, started as `torchrun --standalone` starts them, exiting with the code
of the rank that failed first.

    python -m launch.ranks 2 -m launch.cli train --config run.toml
    python -m launch.ranks 4 -m launch.worker trainer topology.toml --name trainer-0

Why not torchrun itself: it exits 1 whatever its ranks exited with, and the supervisor acts on exit codes (a
configuration error is not restarted, a hub not found yet is not a crash); and torchrun's own argument parser takes
an abbreviated flag of the command (`--max 3`) for an ambiguous one of its own. The ranks are started with
torchrun's engine (`elastic_launch`, c10d rendezvous on a free local port), with no restarts of its own: a rank that
dies ends the group, and whoever started this process decides. A signal received here (SIGTERM, Ctrl-C) is passed
on to the ranks, which get `SHUTDOWN_S` seconds to finish (a step, a checkpoint) before they are killed.
"""

from __future__ import annotations

import os
import sys
import uuid

SHUTDOWN_S = 300


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m launch.ranks N PYTHON-ARGS... (N ranks of `python PYTHON-ARGS...`)", file=sys.stderr)
        return 2
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nproc, command = int(argv[0]), argv[1:]
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: N ranks do not each take every core
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          shutdown_timeout=SHUTDOWN_S)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*command)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode  # -9 (SIGKILL) -> 137
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
