"""Starting and stopping an embedded Ray session (pipelines/ray_runtime.py).

Runs in a child process so that this pytest process never owns a Ray session (other tests
start their own, or join clusters).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipelines import ray_runtime
from test_cli_support import REPO, cli_env

# Enters ray_session, notes the autoscaler monitor's pid, and records, when Ray's shutdown
# comes to stop the monitor, whether it is still running (Ray then sends SIGTERM and waits up
# to 1 s: the monitor answers by reporting to the GCS that shutdown has already stopped).
CHILD = r"""
import json, time
import ray
from ray._private import node as ray_node, ray_constants, worker as ray_worker
from pipelines.ray_runtime import ray_session

seen = {}
original = ray_node.Node._kill_process_impl

def spy(self, process_type, **kwargs):
    if process_type == ray_constants.PROCESS_TYPE_MONITOR:
        seen["alive_when_ray_stops_it"] = any(
            i.process.poll() is None for i in self.all_processes.get(process_type, []))
    return original(self, process_type, **kwargs)

ray_node.Node._kill_process_impl = spy
with ray_session() as resources:
    infos = ray_worker._global_node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, [])
    seen["monitor_pids"] = [i.process.pid for i in infos]
    seen["running"] = [i.process.poll() is None for i in infos]
    raylet = ray_worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    with open(f"/proc/{raylet.pid}/environ", "rb") as fh:
        seen["raylet_env"] = {k.decode(): v.decode() for k, _, v in
                              (item.partition(b"=") for item in fh.read().split(b"\0") if item)
                              if k.startswith(b"RAY_raylet_client")}
    assert ray.get(ray.put(7)) == 7
    t0 = time.monotonic()
seen["shutdown_s"] = time.monotonic() - t0
seen["ray_down"] = not ray.is_initialized()
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def embedded_session() -> tuple[dict, str]:
    """(what CHILD saw, its stderr): one embedded session for the module's tests."""
    tmp = Path(tempfile.mkdtemp(prefix="vxr", dir="/tmp"))  # short: Unix socket paths < 108 bytes
    try:
        done = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=cli_env(tmp),
                              capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_embedded_session_stops_the_autoscaler_monitor_before_ray_shutdown(embedded_session):
    seen, stderr = embedded_session
    # The monitor ran during the session (else the test would prove nothing) ...
    assert seen["monitor_pids"] and all(seen["running"])
    # ... and was already gone when Ray's own shutdown reached it: no 1 s SIGTERM grace.
    assert seen["alive_when_ray_stops_it"] is False
    assert seen["ray_down"]
    # Killing it is silent: no "autoscaler failed" message from a monitor that saw SIGTERM.
    assert "autoscaler failed" not in stderr.lower()


def test_embedded_raylet_retries_local_connects_every_50_ms(embedded_session):
    # Ray's default (1 s between tries) made 6 of 20 starts 1 s slower: the raylet lost the race
    # to its own object store's socket. The raylet itself must see the setting.
    seen, _ = embedded_session
    assert seen["raylet_env"] == {"RAY_raylet_client_connect_timeout_milliseconds": "50",
                                  "RAY_raylet_client_num_connect_attempts": "200"}


@pytest.mark.parametrize("users", [{"RAY_raylet_client_connect_timeout_milliseconds": "2000"},
                                   {"RAY_raylet_client_num_connect_attempts": "3"}])
def test_a_users_own_connect_setting_is_kept(monkeypatch, users):
    for key in ("RAY_raylet_client_connect_timeout_milliseconds", "RAY_raylet_client_num_connect_attempts"):
        monkeypatch.delenv(key, raising=False)
    for key, value in users.items():
        monkeypatch.setenv(key, value)
    ray_runtime._retry_local_connects_quickly()
    # Neither is changed: 50 ms with the user's attempt count (or the reverse) would not be
    # the patience either of us chose.
    assert {k: v for k, v in os.environ.items() if k.startswith("RAY_raylet_client")} == users
