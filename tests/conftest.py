"""Shared fixtures: generated videos (ffmpeg lavfi), the shared corpus, a tiny model, index dirs.

The ffmpeg binary is imageio-ffmpeg's (pip-installed), so tests need no system ffmpeg.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

# A test run started as a background job of a non-interactive shell (`cmd &` in a script)
# inherits SIGINT ignored (POSIX), and so would every vidx it starts: the Ctrl-C tests would see
# Ctrl-C do nothing. A Python handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos"
TINY_MODEL = "vidx-tiny"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class PacedContainer:
    """A PyAV container whose demuxer takes ``pause_s`` per packet (slow storage) and, from
    packet ``circle_after`` on (if given), hands the same packet forever (a damaged file whose
    demuxer goes round in circles). Everything else is the real container's."""

    def __init__(self, container, pause_s: float = 0.0, circle_after: int | None = None):
        self._c, self._pause_s, self._circle_after = container, pause_s, circle_after

    def __getattr__(self, name):
        return getattr(self._c, name)

    def demux(self, *streams):
        for i, packet in enumerate(self._c.demux(*streams)):
            time.sleep(self._pause_s)
            while self._circle_after is not None and i >= self._circle_after:
                time.sleep(0.005)
                yield packet
            yield packet


def make_video(path: Path, source: str = "testsrc2=size=160x120:rate=25", duration_s: float = 2.0,
               codec: str = "libx264", extra: list[str] | None = None, pre_input: list[str] | None = None) -> Path:
    """Render a lavfi source to ``path`` (argument list, never a shell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *(pre_input or []), "-f", "lavfi",
           "-i", f"{source}", "-t", str(duration_s)]
    if codec:
        cmd += ["-c:v", codec]
    if codec == "libx264":
        cmd += ["-pix_fmt", "yuv420p", "-preset", "ultrafast"]
    cmd += [*(extra or []), str(path)]
    subprocess.run(cmd, check=True, timeout=120)
    return path


def make_color_video(path: Path, colors: list[str], seconds_each: float = 2.0, size: str = "160x120",
                     rate: int = 25) -> Path:
    """Concatenated solid-colour segments: a video whose content at each time is known."""
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs: list[str] = []
    for c in colors:
        inputs += ["-f", "lavfi", "-t", str(seconds_each), "-i", f"color=c={c}:size={size}:rate={rate}"]
    n = len(colors)
    graph = "".join(f"[{i}:v]" for i in range(n)) + f"concat=n={n}:v=1:a=0[v]"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *inputs, "-filter_complex", graph,
                    "-map", "[v]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast",
                    str(path)], check=True, timeout=120)
    return path


def make_varied_videos(folder: Path, n: int, sources: tuple[str, ...], size: str, base_s: int,
                       prefix: str) -> Path:
    """``n`` distinct lavfi videos at 30 fps, cycling through ``sources``, lasting base_s..base_s+3 s."""
    for i in range(n):
        make_video(folder / f"{prefix}{i:02d}.mp4", f"{sources[i % len(sources)]}=size={size}:rate=30",
                   duration_s=base_s + (i % 4))
    return folder


@pytest.fixture
def video_dir(tmp_path: Path) -> Path:
    d = tmp_path / "videos"
    d.mkdir()
    return d


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def tiny_settings(index_dir: Path):
    """Settings for fast tests: tiny open_clip architecture with (seeded) random weights."""
    from indexer.config import load_settings

    return load_settings({"db": str(index_dir), "model": TINY_MODEL, "pretrained": "random",
                          "clip_s": 2.0}, environ={})


@pytest.fixture
def shared_videos() -> Path:
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"shared corpus not found at {SHARED_VIDEOS}")
    return SHARED_VIDEOS


def copy_shared(names: list[str], dest: Path) -> list[Path]:
    """Copy files from the read-only shared corpus into a test's own folder."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        target = dest / name
        shutil.copy2(SHARED_VIDEOS / name, target)
        out.append(target)
    return out


@pytest.fixture(scope="session", autouse=True)
def _isolate_user_dirs(tmp_path_factory):
    """Never touch the developer's real XDG data/config dirs or model caches."""
    home = tmp_path_factory.mktemp("home")
    old = {k: os.environ.get(k) for k in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "HF_HUB_OFFLINE")}
    os.environ["XDG_DATA_HOME"] = str(home / "data")
    os.environ["XDG_CONFIG_HOME"] = str(home / "config")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
