"""Faults on a real two-node Ray cluster (``test_cluster.LocalCluster``): every video indexed exactly once.

Each test runs ``vidx index --ray-address`` over eight generated videos and injects one fault
from outside, the way it happens in production:

* a decode worker process (``ray::_decode_stream``) is SIGKILLed mid-decode: Ray retries the
  streaming task (``max_retries=1``) and the driver must not see the file twice;
* the model actor's process (``ray::ModelActor``) is SIGKILLed: Ray restarts the actor
  (``max_restarts=2``) and retries its calls (``max_task_retries=2``);
* the second node dies (raylet, object store, agents and workers SIGKILLed at once): its
  decodes are retried on the head, frames lost with its object store are rebuilt from lineage;
* the driver is SIGKILLed (its whole process group) after a commit: the cluster survives,
  releases the dead job's workers, and the re-run resumes with no duplicate and no loss.

"Exactly once" is checked against a single-node reference run of the same folder: same videos
(each once, all 'indexed'), same clips, same vectors, FAISS ids == DuckDB clip ids, and the
run's own counts (``indexed`` == 8, ``failed`` == 0).

The last tests pin bugs that were found with them and fixed in pipelines/index.py and
pipelines/ray_runtime.py: a file whose worker is lost twice, a model actor lost for good,
Ctrl-C during a commit, and Ray's worker-death lines on stdout.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import make_video
from test_cli_support import (RUN_TIMEOUT_S, Result, assert_index_consistent, cli_env, faiss_meta_ntotal,  # noqa: F401
                              index_args, kill_group, popen_vidx, query, ray_tmp, videos, wait_for)
from test_cluster import (ARGS, N_VIDEOS, LocalCluster, running_cluster, assert_same_index, corpus8, json_summary,  # noqa: F401
                          recorded_stats, single_node)
from test_local_executor import interrupt_during_second_commit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """One cluster for the faults it survives (a killed worker, actor or driver)."""
    yield from running_cluster(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def own_cluster(tmp_path):
    """A cluster of its own, for a test that kills one of its nodes."""
    yield from running_cluster(tmp_path)


def kill_workers(cluster: LocalCluster, proc, title: str, after_s: float, times: int = 1,
                 nodes=("head", "worker"), timeout_s: float = 300) -> list[str]:
    """SIGKILL ``times`` Ray worker processes titled ``title*``, each once it has been busy with
    that title for ``after_s`` (Ray reuses workers: the clock starts when the title appears)."""
    import psutil

    since: dict[int, float] = {}
    killed: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(killed) < times:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the fault was injected ({killed} killed of {times})\n"
                        f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {title} worker to kill within {timeout_s} s")
        now = time.monotonic()
        current = {}
        for node in nodes:
            for p in cluster.workers(node, title):
                current[p.pid] = (node, p)
        since = {pid: t for pid, t in since.items() if pid in current}
        for pid, (node, p) in current.items():
            if now - since.setdefault(pid, now) >= after_s and len(killed) < times:
                try:
                    name = p.name()
                    p.kill()
                except psutil.Error:
                    continue
                killed.append(f"{node}:{pid}:{name}")
                since.pop(pid)
        time.sleep(0.05)
    return killed


def run_with_fault(cluster: LocalCluster, folder: Path, db: Path, env: dict, fault, *extra: str) -> tuple[Result, object]:
    """Start ``vidx index --ray-address``; call ``fault(proc)`` while it runs; wait for it to end."""
    t0 = time.monotonic()
    proc = popen_vidx(index_args([folder], db, *ARGS, "--ray-address", cluster.address, *extra), env)
    try:
        info = fault(proc)
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        kill_group(proc)
    return Result(proc.returncode, out, err, time.monotonic() - t0), info


def assert_exactly_once(res: Result, db: Path, reference: Path, n: int = N_VIDEOS) -> dict:
    assert res.rc == 0, res.describe()
    s = json_summary(res)
    assert (s["indexed"], s["failed"], s["skipped"], s["status"]) == (n, 0, 0, "ok"), (s["failures"], res.describe())
    assert sum(s["workers"].values()) == n, s["workers"]
    assert recorded_stats(db)["indexed"] == n
    assert len(videos(db)) == n
    assert_same_index(db, reference)
    return s


# -- a worker process dies -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def decode_worker_killed(shared_cluster, corpus8, tmp_path_factory):
    db = tmp_path_factory.mktemp("decode-kill") / "index"
    res, killed = run_with_fault(shared_cluster, corpus8, db, cli_env(),
                                 lambda proc: kill_workers(shared_cluster, proc, "ray::_decode_stream", 0.3))
    return {"res": res, "db": db, "killed": killed}


def test_decode_worker_killed_mid_run(decode_worker_killed, single_node):
    assert len(decode_worker_killed["killed"]) == 1
    assert_exactly_once(decode_worker_killed["res"], decode_worker_killed["db"], single_node)


def test_stdout_stays_pure_json_when_a_worker_dies(decode_worker_killed):
    res = decode_worker_killed["res"]
    assert res.stdout.lstrip().startswith("{"), res.stdout[:500]
    res.json  # noqa: B018 - parses, or fails with the output


def test_model_actor_killed_mid_run(shared_cluster, corpus8, single_node, tmp_path):
    db = tmp_path / "index"
    env = cli_env(VIDX_FAISS_FLUSH_S="0")

    def kill_actor_once_loaded(proc):
        wait_for(lambda: faiss_meta_ntotal(db) > 0, proc, 300, "a first commit")  # the model is loaded
        return kill_workers(shared_cluster, proc, "ray::ModelActor", 0.0)

    res, killed = run_with_fault(shared_cluster, corpus8, db, env, kill_actor_once_loaded)
    assert len(killed) == 1
    assert_exactly_once(res, db, single_node)


# -- a node dies ------------------------------------------------------------------------------------

def test_second_node_lost_mid_run(own_cluster, corpus8, single_node, tmp_path):
    db = tmp_path / "index"

    def lose_node(proc):
        # wait until the second node is decoding a file, then the whole node goes at once
        deadline = time.monotonic() + 300
        while not own_cluster.workers("worker", "ray::_decode_stream"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the second node never decoded a file")
            time.sleep(0.05)
        time.sleep(0.5)
        return own_cluster.kill_node("worker")

    res, killed = run_with_fault(own_cluster, corpus8, db, cli_env(), lose_node)
    assert "raylet" in killed, killed
    s = assert_exactly_once(res, db, single_node)
    assert own_cluster.node_ids["head"][:12] in {w.split(":")[0] for w in s["workers"]}


# -- the driver dies --------------------------------------------------------------------------------

def test_driver_killed_mid_run_then_rerun_resumes(shared_cluster, corpus8, single_node, tmp_path):
    db = tmp_path / "index"
    env = cli_env(VIDX_COMMIT_EVERY_S="0.5", VIDX_FAISS_FLUSH_S="0")

    def kill_driver_after_first_commit(proc):
        wait_for(lambda: faiss_meta_ntotal(db) > 0, proc, 300, "a first commit")
        kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=60)

    res, _ = run_with_fault(shared_cluster, corpus8, db, env, kill_driver_after_first_commit)
    assert res.rc == -signal.SIGKILL, res.describe()
    n = query(db, "SELECT count(*) FROM videos")[0][0]
    assert 0 < n < N_VIDEOS, f"the kill did not land mid-run: {n} videos committed"
    assert_index_consistent(db, check_faiss=False)  # FAISS may lag DuckDB after a crash
    assert query(db, "SELECT status FROM runs") == [("running",)]

    # The cluster outlives its driver and frees the dead job's model actor and decodes.
    wait_for(lambda: not (shared_cluster.workers("head", "ray::ModelActor")
                          or shared_cluster.workers("worker", "ray::ModelActor")), None, 60,
             "the killed driver's model actor to be released")

    again = run_with_fault(shared_cluster, corpus8, db, env, lambda proc: None)[0]
    assert again.rc == 0, again.describe()
    s = json_summary(again)
    assert (s["indexed"], s["unchanged"], s["failed"], s["status"]) == (N_VIDEOS - n, n, 0, "ok"), s
    assert_same_index(db, single_node)
    runs = [r[0] for r in query(db, "SELECT status FROM runs ORDER BY run_id")]
    assert len(runs) == 2 and runs[-1] == "ok", runs


# -- faults that are recorded as bad files (bugs) -----------------------------------------------------

@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("long")
    make_video(folder / "long.mp4", "testsrc2=size=640x360:rate=30", duration_s=30)
    return folder


def test_decode_lost_twice_on_one_file_is_started_again(shared_cluster, long_video, tmp_path):
    db = tmp_path / "index"
    res, killed = run_with_fault(shared_cluster, long_video, db, cli_env(),
                                 lambda proc: kill_workers(shared_cluster, proc, "ray::_decode_stream", 0.3, times=2))
    assert len(killed) == 2
    assert res.rc == 0, res.describe()
    s = json_summary(res)
    assert (s["indexed"], s["failed"]) == (1, 0), s["failures"]
    assert_index_consistent(db)


def test_model_actor_lost_for_good_fails_no_video(shared_cluster, corpus8, tmp_path):
    # 16 files decoded one at a time: the run outlasts three actor (re)starts
    folder = tmp_path / "videos"
    folder.mkdir()
    for src in sorted(corpus8.iterdir()):
        shutil.copy2(src, folder / src.name)
        remux(src, folder / f"{src.stem}-copy{src.suffix}")
    db = tmp_path / "index"
    env = cli_env(VIDX_FAISS_FLUSH_S="0")

    def kill_actor_three_times(proc):
        wait_for(lambda: faiss_meta_ntotal(db) > 0, proc, 300, "a first commit")  # the model is loaded
        return kill_workers(shared_cluster, proc, "ray::ModelActor", 0.0, times=3)

    res, killed = run_with_fault(shared_cluster, folder, db, env, kill_actor_three_times, "--decode-workers", "1")
    assert len(killed) == 3
    assert res.rc == 0, res.describe()
    s = json_summary(res)
    assert (s["indexed"], s["failed"]) == (2 * N_VIDEOS, 0), s["failures"]
    assert_index_consistent(db)


def remux(src: Path, dst: Path) -> None:
    """The same stream in a new file with other bytes (a copy vidx does not recognise as one)."""
    import subprocess

    from conftest import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(src), "-c", "copy",
                    "-metadata", f"title={dst.name}", str(dst)], check=True, timeout=60)


def test_ctrl_c_during_a_commit_stops_cleanly(corpus8, tmp_path, ray_tmp, monkeypatch):
    import dataclasses

    from indexer.config import load_settings
    from pipelines.index import index_paths

    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))  # embedded Ray in this process
    settings = load_settings({"db": str(tmp_path / "index"), "model": "vidx-tiny", "pretrained": "random",
                              "clip_s": 1.0, "tags": False}, environ={})
    interrupt_during_second_commit(monkeypatch)
    s = index_paths([str(corpus8)], dataclasses.replace(settings, commit_every_s=0.0), show_progress=False)
    assert s.status == "interrupted"
    assert 2 <= s.indexed < N_VIDEOS
    assert_index_consistent(tmp_path / "index")
