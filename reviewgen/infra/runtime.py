"""Connecting to Ray: the current one, RAY_ADDRESS, or an embedded local Ray (one rule for every job)."""

from __future__ import annotations

import math
import os
from typing import Callable

from reviewgen.infra.console import quiet_ray_loggers


def ensure_ray(*, min_cpus: float = 0, log: Callable[[str], None] = print, **init_kwargs) -> str:
    """Use Ray if this process already joined one; else connect to RAY_ADDRESS (a cluster, or inside
    `ray job submit`); else start an embedded local Ray. Returns "existing", "cluster" or "local".

    The local Ray gets at least 4 logical CPUs (and `min_cpus`): on a 2-core machine an actor pool or a
    trainer otherwise holds every CPU and its own read tasks never get scheduled. Its
    dashboard binds to 127.0.0.1; Ray Train's state queries need it.
    """
    import ray

    quiet_ray_loggers()  # importing ray attaches its console handler again
    # a quiet console (reviewgen.infra.console) keeps worker output in Ray's session logs
    init_kwargs.setdefault("log_to_driver", os.environ.get("RAY_LOG_TO_DRIVER", "1") not in ("0", "false"))
    if ray.is_initialized():
        return "existing"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log(f"connecting to Ray at {address}")
        ray.init(address=address, **init_kwargs)
        quiet_ray_loggers()
        return "cluster"
    cpus = max(4, os.cpu_count() or 1, math.ceil(min_cpus))
    init_kwargs.setdefault("include_dashboard", True)
    init_kwargs.setdefault("dashboard_host", "127.0.0.1")
    ray.init(address="local", num_cpus=cpus, **init_kwargs)
    quiet_ray_loggers()
    return "local"
