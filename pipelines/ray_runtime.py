"""Starting and joining Ray quietly.

One machine: Ray starts embedded (no dashboard, logs kept out of stdout).
A cluster: ``ray_address`` ("auto" or host:port) joins it. Ray's own log
lines never reach stdout, which carries results only.
"""

from __future__ import annotations

import logging
import os
import subprocess
from contextlib import contextmanager
from collections.abc import Iterator

from indexer.terminal import stdin_from_devnull

log = logging.getLogger(__name__)


def _driver_messages_to_stderr() -> None:
    """Ray's driver prints cluster error messages ("(raylet) A worker died ...") to stdout, even
    with log_to_driver=False; stdout carries results only (``--json``), so send them to stderr."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "_vidx_stderr", False):
        return

    def to_stderr(data, ignore_prefix: bool):
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr._vidx_stderr = True
    ray_worker.print_to_stdstream = to_stderr


@contextmanager
def ray_session(address: str = "", num_cpus: int | None = None) -> Iterator[dict]:
    """Initialise Ray (embedded or joined) for the duration of the block; yields cluster resources."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():  # a caller (tests, a notebook) already owns the session
        yield ray.cluster_resources()
        return
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                  logging_level=logging.WARNING)
    if address:
        kwargs["address"] = address
    else:
        # A private single-machine cluster on loopback: token auth only adds a warning line.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # The workers inherit this: the model's OpenMP threads sleep instead of spinning while
        # they wait for frames, and leave the cores to the decoders. With the image tower in
        # bfloat16 the model waits most of the time; 8 alternating runs of the benchmark files
        # each way: median 13.35 s against 13.97 s, faster in 7 of 8 pairs (BENCHMARKS.md).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        _retry_local_connects_quickly()
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        # Keep the object store modest: frames stream through it and are consumed quickly.
        kwargs["object_store_memory"] = int(os.environ.get("VIDX_OBJECT_STORE_BYTES", 512 * 1024 * 1024))
    _driver_messages_to_stderr()
    # Ray's daemons, and the workers they start, inherit stdin: never the user's terminal, which
    # would stop any worker (own process group) whose children touch it (indexer/terminal.py).
    with stdin_from_devnull():
        ray.init(**kwargs)
    try:
        yield ray.cluster_resources()
    finally:
        if not address:
            _stop_autoscaler_monitor()
        ray.shutdown()


# Ray's own defaults: 10 attempts, 1 s apart.
_CONNECT_ATTEMPTS_DEFAULT = 10
_CONNECT_RETRY_MS_DEFAULT = 1000
_CONNECT_RETRY_MS = 50


def _retry_local_connects_quickly() -> None:
    """Make an embedded cluster's processes retry local socket connections every 50 ms, not 1 s.

    The raylet starts its object store in a thread and connects to it at once; when it loses
    that race it sleeps ``raylet_client_connect_timeout_milliseconds`` (1 s) before the next
    try. On the development VM 6 of 20 embedded starts took 3.0 s instead of 2.0 s, all of it
    that sleep (raylet.out: object manager up 1.0 s after the store); with 50 ms, none of 20
    did (mean start 2.29 -> 2.02 s; BENCHMARKS.md). The number of attempts grows to keep Ray's total patience (10 s).
    The daemons and workers inherit these variables; a user's own setting of either wins.
    """
    timeout_key = "RAY_raylet_client_connect_timeout_milliseconds"
    attempts_key = "RAY_raylet_client_num_connect_attempts"
    if timeout_key in os.environ or attempts_key in os.environ:
        return
    os.environ[timeout_key] = str(_CONNECT_RETRY_MS)
    os.environ[attempts_key] = str(_CONNECT_ATTEMPTS_DEFAULT * _CONNECT_RETRY_MS_DEFAULT // _CONNECT_RETRY_MS)


def _stop_autoscaler_monitor() -> None:
    """Kill the autoscaler monitor of an embedded cluster before ``ray.shutdown()``.

    ``ray.shutdown()`` stops the GCS before the monitor; the monitor answers SIGTERM by
    reporting its own end to that GCS, hangs, and is killed only after Ray's 1 s grace. That
    was 1.0 of the 1.3 s every embedded run spent shutting down, with the CPU idle
    (BENCHMARKS.md). On a private single-machine cluster the monitor holds nothing worth a
    graceful exit. Ray's process table is private API: if it moves, shutdown is just slower.
    """
    try:
        from ray._private import ray_constants
        from ray._private import worker as ray_worker

        node = ray_worker._global_node
        infos = list(node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, [])) if node else []
    except Exception:  # noqa: BLE001 - a Ray release without this layout: the slow path still works
        return
    for info in infos:
        process = info.process
        if process.poll() is None:
            process.kill()
            try:
                process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
