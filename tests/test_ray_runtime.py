"""Starting and stopping an embedded Ray session (pipelines/ray_runtime.py).

Runs in a child process so that this pytest process never owns a Ray session (other tests
start their own, or join clusters).
"""

from __future__ import annotations

import json
import subprocess
import sys

from test_cli_support import REPO, cli_env, ray_tmp  # noqa: F401

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
    assert ray.get(ray.put(7)) == 7
    t0 = time.monotonic()
seen["shutdown_s"] = time.monotonic() - t0
seen["ray_down"] = not ray.is_initialized()
print(json.dumps(seen))
"""


def test_embedded_session_stops_the_autoscaler_monitor_before_ray_shutdown(ray_tmp):
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=cli_env(ray_tmp),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # The monitor ran during the session (else the test would prove nothing) ...
    assert seen["monitor_pids"] and all(seen["running"])
    # ... and was already gone when Ray's own shutdown reached it: no 1 s SIGTERM grace.
    assert seen["alive_when_ray_stops_it"] is False
    assert seen["ray_down"]
    # Killing it is silent: no "autoscaler failed" message from a monitor that saw SIGTERM.
    assert "autoscaler failed" not in done.stderr.lower()
