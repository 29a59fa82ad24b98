"""Connect a job to Ray: a cluster (an address, or RAY_ADDRESS under `ray job submit`) or a fresh local Ray.

Quiet by default: worker output (model load messages, one per actor) stays in
Ray's log files, Ray's own INFO lines and the token-auth notice are not printed, and Ray
Data shows its progress bars only on a terminal. Our own progress lines, warnings that
matter and the summary are printed by the jobs. `verbose=True` brings everything back.
"""

from __future__ import annotations

import logging
import os
import sys

from fashion_ray.errors import RunError


def init_ray(address: str | None = None, num_cpus: int | None = None, *, verbose: bool = False) -> None:
    import ray
    import ray.data  # configures Ray Data's loggers; the levels below must come after it

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not verbose:
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
        # "uses 1 GiB of memory per worker" every 30 s: the person actor holds its models and
        # the batch's masks; our plan is the one place that sets resources, not this advice
        logging.getLogger("ray.data._internal.issue_detection").setLevel(logging.ERROR)
    common = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, **common)
        else:
            # "local" always starts a fresh Ray, never a stray `ray start` cluster on this machine
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **common)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, or a bare Exception when its start times out
        where = f"reach the Ray cluster at {address}" if address else "start a local Ray"
        raise RunError(f"could not {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    # progress bars redraw in place: right on a terminal, noise in CI logs and `ray job logs`
    ray.data.DataContext.get_current().enable_progress_bars = verbose or sys.stderr.isatty()
