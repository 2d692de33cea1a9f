"""vidx started from a terminal: no process it starts may be stopped by the terminal.

A user runs ``vidx index FOLDER`` in a terminal, or ``vidx index FOLDER &``. Processes outside
the terminal's foreground process group that touch it are stopped by the kernel (SIGTTIN /
SIGTTOU): Ray's workers run in their own process groups, and importing PySceneDetect runs
``ffmpeg -v quiet``, which sets up the terminal on its stdin. Before the fix, every decode
worker stopped there and each video failed as "hung" after the decode timeout.

The harness below gives vidx a real pseudo-terminal as controlling terminal and stdin,
either in the foreground (the Ray executor: its workers are the background groups) or as a
background job (the local executor, like ``vidx index ... &``), and fails as soon as any
process of the tree is stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_video
from test_cli_support import REPO, cli_env, index_args, query, ray_tmp  # noqa: F401

# Runs ARGV (json) with a new pty as controlling terminal and stdin, in the terminal's
# foreground process group or in a background one; exit 3 as soon as a process of the tree
# is stopped, 4 on timeout, else the command's exit code. stdout/stderr go to files.
HARNESS = r"""
import fcntl, json, os, subprocess, sys, termios, time
import psutil

mode, argv, out_path, err_path, timeout_s = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)  # we lead a new session (start_new_session=True)
os.set_blocking(master, False)
with open(out_path, "w") as out, open(err_path, "w") as err:
    proc = subprocess.Popen(argv, stdin=slave, stdout=out, stderr=err,
                            process_group=0 if mode == "background" else None)
deadline, code = time.monotonic() + timeout_s, None
while code is None:
    try:
        os.read(master, 65536)  # drain whatever reaches the terminal
    except BlockingIOError:
        pass
    try:
        tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    stopped = []
    for p in tree:
        try:
            if p.status() == psutil.STATUS_STOPPED:
                stopped.append(" ".join(p.cmdline())[:120])
        except psutil.Error:
            pass
    if stopped or time.monotonic() > deadline:
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass
        print("STOPPED: " + " | ".join(stopped) if stopped else "TIMEOUT", flush=True)
        code = 3 if stopped else 4
        break
    code = proc.poll()
    time.sleep(0.1)
sys.exit(code)
"""


def run_on_terminal(mode: str, args: list[str], env: dict[str, str], tmp: Path, timeout_s: float = 300):
    out, err = tmp / f"{mode}.out", tmp / f"{mode}.err"
    argv = [sys.executable, "-m", "vidx", *args]
    r = subprocess.run([sys.executable, "-c", HARNESS, mode, json.dumps(argv), str(out), str(err), str(timeout_s)],
                       env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout_s + 60,
                       start_new_session=True)
    return r.returncode, r.stdout, out.read_text(), err.read_text()


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tty") / "videos"
    make_video(folder / "a.mp4", "testsrc2=size=160x120:rate=25", duration_s=4.0)
    make_video(folder / "b b.mp4", "mandelbrot=size=160x120:rate=25", duration_s=3.0)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("mode, executor", [("foreground", "ray"), ("background", "local")])
def test_index_from_a_terminal_is_never_stopped(mode, executor, two_videos, tmp_path, ray_tmp):  # noqa: F811
    db = tmp_path / "db"
    args = index_args([two_videos], db, "--executor", executor, "--decode-timeout-s", "60")
    rc, said, out, err = run_on_terminal(mode, args, cli_env(ray_tmp), tmp_path)
    assert rc == 0, f"rc={rc} {said}\n--- stderr ---\n{err[-3000:]}"
    summary = json.loads(out)
    assert summary["indexed"] == 2 and summary["failed"] == 0, summary
    assert query(db, "SELECT count(*) FROM videos WHERE status = 'indexed'")[0][0] == 2


def test_stdin_from_devnull_only_while_the_block_runs(tmp_path):
    """In a process whose stdin is a terminal: /dev/null inside the block (a child started there
    inherits it), the terminal again after."""
    code = (
        "import os, subprocess, sys\n"
        "master, slave = os.openpty()\n"
        "os.dup2(slave, 0)\n"
        "from indexer.terminal import stdin_from_devnull, stdin_is_terminal\n"
        "assert stdin_is_terminal()\n"
        "with stdin_from_devnull():\n"
        "    inside = stdin_is_terminal()\n"
        "    child = subprocess.run([sys.executable, '-c', 'import os; print(os.isatty(0))'],\n"
        "                           capture_output=True, text=True).stdout.strip()\n"
        "print(inside, child, stdin_is_terminal())\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=cli_env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "True"]
