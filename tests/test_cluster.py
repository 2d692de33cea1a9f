"""``vidx index --ray-address`` on a real two-node Ray cluster, built on this one machine.

``LocalCluster`` starts a Ray head and a second Ray node with the venv's ``ray`` binary
(``ray start --head`` / ``ray start --address=127.0.0.1:PORT``), each with its own short
temp dir and its own free ports (GCS, node manager, object manager, agents, metrics), so it
never meets another Ray session on the box. Each ``ray start`` runs in a new session: its
daemons (gcs_server, raylet, agents) share that process group; Ray workers call setsid, so
they are found as descendants of the node's raylet. Teardown SIGKILLs both groups and every
descendant, even when the test failed. ``ray stop`` is never used: it kills every Ray
process of every user on the machine.

Resources: the model actor takes ``num_cpus=1``. With one CPU per node the actor would hold
one node's only CPU and every decode would run on the other node, so the head gets 2 CPUs
(actor + one decode; the driver connects to the head, where Ray's hybrid policy places the
actor) and the second node 1 CPU (one decode): decoding runs on both nodes at once.

The statistics asserted come from the run itself: ``workers`` of the JSON summary (also
stored in ``runs.stats``) counts decoded videos per ``nodeid12:pid``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_varied_videos
from test_cli_support import (Result, assert_index_consistent, cli_env, clips_by_path, index_args, query,  # noqa: F401
                              ray_tmp, run_vidx, vectors, videos)

RAY_BIN = str(Path(sys.executable).with_name("ray"))
N_VIDEOS = 8
SOURCES = ("testsrc2", "testsrc", "smptebars", "mandelbrot", "rgbtestsrc", "life", "cellauto", "smptehdbars")
ARGS = ("--clip-s", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A Ray head and one more Ray node on this machine (loopback), torn down by pid."""

    def __init__(self, root: Path, head_cpus: int = 2, worker_cpus: int = 1):
        self.root = Path(tempfile.mkdtemp(prefix="vxc", dir="/tmp"))  # short: socket paths < 108 bytes
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.port = _free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("VIDX_", "RAY_"))}
        self.env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0")
        self.groups: dict[str, int] = {}  # node name -> process group of its `ray start`
        self.log = root / "ray-start.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ports(self) -> list[str]:
        return ["--node-manager-port", str(_free_port()), "--object-manager-port", str(_free_port()),
                "--dashboard-agent-listen-port", str(_free_port()),
                "--dashboard-agent-grpc-port", str(_free_port()),
                "--metrics-export-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port())]

    def _start(self, name: str, args: list[str]) -> None:
        temp = self.root / name
        cmd = [RAY_BIN, "start", *args, "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
               "--disable-usage-stats", "--object-store-memory", str(256 * 1024 * 1024), *self._ports()]
        with open(self.log, "a") as log:
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            self.groups[name] = proc.pid  # set before waiting: teardown kills it whatever happens
            try:
                rc = proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                rc = None
        if rc != 0:
            raise RuntimeError(f"ray start ({name}) failed (rc={rc}):\n{self.log.read_text()[-3000:]}")

    def start(self) -> "LocalCluster":
        self._start("head", ["--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
                             "--include-dashboard=false"])
        self._start("worker", [f"--address={self.address}", f"--num-cpus={self.worker_cpus}"])
        # both raylets registered (the worker's `ray start` returns once its raylet is up)
        self.node_ids = {name: self.node_id(name) for name in self.groups}
        return self

    def raylet(self, name: str):
        import psutil

        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                if p.info["name"] == "raylet" and os.getpgid(p.pid) == self.groups[name]:
                    return p
            except (psutil.Error, ProcessLookupError):
                continue
        raise LookupError(f"no raylet for node {name}")

    def node_id(self, name: str) -> str:
        for arg in self.raylet(name).cmdline():
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        raise LookupError(f"raylet of {name} has no --node_id")

    def processes(self, name: str) -> list:
        """Every live process of a node: its `ray start` group and all their descendants."""
        import psutil

        found: dict[int, object] = {}
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.groups.get(name):
                    found[p.pid] = p
            except (psutil.Error, ProcessLookupError):
                continue
        for p in list(found.values()):
            try:
                for c in p.children(recursive=True):
                    found[c.pid] = c
            except psutil.Error:
                continue
        return list(found.values())

    def workers(self, name: str, title_prefix: str) -> list:
        """Ray worker processes of a node whose process title starts with ``title_prefix``."""
        import psutil

        out = []
        for p in self.processes(name):
            try:
                if p.name().startswith(title_prefix) or " ".join(p.cmdline()).startswith(title_prefix):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def kill_node(self, name: str) -> list[str]:
        """SIGKILL a node at once (raylet, object store, agents, workers), as if its machine died."""
        import psutil

        procs = self.processes(name)
        names = []
        for p in procs:
            try:
                names.append(p.name())
                p.kill()
            except psutil.Error:
                pass
        try:
            os.killpg(self.groups[name], signal.SIGKILL)
        except (ProcessLookupError, KeyError):
            pass
        psutil.wait_procs(procs, timeout=20)
        return names

    def stop(self) -> None:
        for name in list(self.groups):
            self.kill_node(name)
        shutil.rmtree(self.root, ignore_errors=True)


def running_cluster(root):
    """A started LocalCluster, stopped (every process killed) however the test ends."""
    c = LocalCluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(tmp_path):
    yield from running_cluster(tmp_path)


@pytest.fixture(scope="module")
def corpus8(tmp_path_factory) -> Path:
    """Eight distinct generated videos (640x360, 4-7 s): each decodes for a second or more."""
    return make_varied_videos(tmp_path_factory.mktemp("corpus8"), N_VIDEOS, SOURCES, "640x360", 4, "c")


def json_summary(res: Result) -> dict:
    """The JSON summary on stdout (tolerating lines Ray itself prints there, see test_faults)."""
    text = res.stdout
    start = 0 if text.startswith("{") else text.find("\n{") + 1
    if start == 0 and not text.startswith("{"):
        return res.json  # raises with the output in the message
    return json.loads(text[start:])


def per_video(db: Path) -> dict[str, tuple[list, np.ndarray]]:
    """path -> ([(idx, start, end)], vectors) from DuckDB."""
    vecs = vectors(db)
    return {path: ([c[1:] for c in clips], np.stack([vecs[c[0]] for c in clips]))
            for path, clips in clips_by_path(db).items()}


def assert_same_index(db: Path, reference: Path) -> None:
    """Same videos, same clips, same vectors (to float noise) as the reference index."""
    assert_index_consistent(db)
    got, ref = per_video(db), per_video(reference)
    assert sorted(got) == sorted(ref), f"videos differ: {sorted(set(got) ^ set(ref))}"
    for path in ref:
        assert got[path][0] == ref[path][0], f"{path}: clips differ from the reference run"
        np.testing.assert_allclose(got[path][1], ref[path][1], atol=1e-5, err_msg=f"{path}: vectors differ")
    assert {r["status"] for r in videos(db).values()} == {"indexed"}


def recorded_stats(db: Path) -> dict:
    """``runs.stats`` of the last run, as the driver recorded it."""
    row = query(db, "SELECT stats FROM runs ORDER BY run_id DESC LIMIT 1")
    return json.loads(row[0][0])


@pytest.fixture(scope="module")
def single_node(corpus8, tmp_path_factory) -> Path:
    """Reference: the same folder indexed with embedded Ray on this machine."""
    db = tmp_path_factory.mktemp("single") / "index"
    ray_dir = Path(tempfile.mkdtemp(prefix="vxr", dir="/tmp"))
    try:
        res = run_vidx(index_args([corpus8], db, *ARGS), cli_env(ray_dir))
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert res.rc == 0, res.describe()
    assert json_summary(res)["indexed"] == N_VIDEOS
    return db


@pytest.mark.slow
def test_two_nodes_share_the_work_and_match_a_single_node_run(cluster, corpus8, single_node, tmp_path, ray_tmp):
    db = tmp_path / "index"
    res = run_vidx(index_args([corpus8], db, *ARGS, "--ray-address", cluster.address), cli_env(ray_tmp))
    assert res.rc == 0, res.describe()
    s = json_summary(res)
    assert (s["indexed"], s["failed"], s["status"]) == (N_VIDEOS, 0, "ok"), s

    stats = recorded_stats(db)
    assert stats["workers"] == s["workers"]
    by_node: dict[str, int] = {}
    for worker, n in stats["workers"].items():
        node = worker.split(":")[0]
        by_node[node] = by_node.get(node, 0) + n
    ids = {name: nid[:12] for name, nid in cluster.node_ids.items()}
    assert set(by_node) == set(ids.values()), (
        f"decodes per node {by_node}; cluster nodes {ids}: both nodes must have decoded videos")
    assert sum(by_node.values()) == N_VIDEOS
    # Ray joined the cluster: nothing was started under the driver's private RAY_TMPDIR.
    assert not any(ray_tmp.rglob("session_*")), "the driver started its own Ray instead of joining"

    assert_same_index(db, single_node)
    assert s["clips_added"] == query(single_node, "SELECT count(*) FROM clips")[0][0]


def test_ray_cluster_yaml_is_valid_for_the_launcher():
    """ray_cluster.yaml passes what `ray up` does before touching a cloud: Ray's own
    prepare_config (defaults of the provider, node types) and validate_config (ray-schema.json);
    the on-premise variant in its closing comment does too, through the local provider's
    bootstrap (offline)."""
    import copy

    import yaml
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"
    text = path.read_text()
    cfg = yaml.safe_load(text)
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    for name, t in types.items():
        if name != prepared["head_node_type"]:
            assert t["min_workers"] == t["max_workers"] > 0, f"{name}: vidx needs every node up at start"
    setup = " ".join(prepared["setup_commands"])
    assert "-e ~/vidx" in setup and "/mnt/archive" in setup
    assert any("--autoscaling-config" in c for c in prepared["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in prepared["worker_start_ray_commands"])

    comment = text.split("# On-premise machines", 1)[1].split("# provider:", 1)[1]
    onprem_block = "provider:" + "\n".join(line[2:] for line in comment.splitlines())
    onprem = {k: v for k, v in cfg.items()
              if k not in ("provider", "auth", "max_workers", "available_node_types", "head_node_type")}
    onprem.update(yaml.safe_load(onprem_block))
    booted = _bootstrap_config(copy.deepcopy(onprem), no_config_cache=True)
    validate_config(booted)
    assert booted["provider"]["type"] == "local"
    assert booted["available_node_types"]["local.cluster.node"]["max_workers"] == 2
