"""Unit tests for indexer.discover: candidate files, symlinks, hidden entries, fingerprints."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from indexer.discover import discover_files, fingerprint_file, is_candidate, resolve_root


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def paths(root, **kw) -> list[str]:
    return [f.path for f in discover_files([str(root)], **kw)]


# -- discovery ------------------------------------------------------------------------------

def test_recursion_and_order(tmp_path):
    touch(tmp_path / "b.mp4")
    touch(tmp_path / "a" / "z.mkv")
    touch(tmp_path / "a" / "deep" / "er" / "y.avi")
    touch(tmp_path / "c.gif")
    assert paths(tmp_path) == [
        str(tmp_path / "a" / "deep" / "er" / "y.avi"),
        str(tmp_path / "a" / "z.mkv"),
        str(tmp_path / "b.mp4"),
        str(tmp_path / "c.gif"),
    ]


def test_stat_fields(tmp_path):
    f = touch(tmp_path / "v.mp4", b"12345")
    os.utime(f, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    (vf,) = discover_files([str(tmp_path)])
    assert vf.path == str(f)
    assert vf.size_bytes == 5
    assert vf.mtime_ns == 1_600_000_000_123_456_789


def test_not_media_extensions_skipped_but_unknown_extensions_kept(tmp_path):
    for name in ("notes.txt", "cover.JPG", "meta.json", "subs.srt", "index.duckdb"):
        touch(tmp_path / name)
    for name in ("clip.MP4", "no_extension", "weird.xyz", "anim.gif", "html_named.avi"):
        touch(tmp_path / name)
    assert sorted(os.path.basename(p) for p in paths(tmp_path)) == sorted(
        ["clip.MP4", "no_extension", "weird.xyz", "anim.gif", "html_named.avi"])


def test_is_candidate():
    assert is_candidate("a.mp4", False)
    assert not is_candidate(".a.mp4", False)
    assert is_candidate(".a.mp4", True)
    assert not is_candidate("a.PNG", True)
    assert is_candidate("a", False)


def test_hidden_skipped_by_default_and_included_on_request(tmp_path):
    touch(tmp_path / "visible.mp4")
    touch(tmp_path / ".hidden.mp4")
    touch(tmp_path / ".cache" / "inside.mp4")
    touch(tmp_path / "sub" / ".also_hidden" / "x.mp4")
    assert paths(tmp_path) == [str(tmp_path / "visible.mp4")]
    assert paths(tmp_path, include_hidden=True) == [
        str(tmp_path / ".cache" / "inside.mp4"),
        str(tmp_path / ".hidden.mp4"),
        str(tmp_path / "sub" / ".also_hidden" / "x.mp4"),
        str(tmp_path / "visible.mp4"),
    ]


def test_hidden_root_itself_is_walked(tmp_path):
    touch(tmp_path / ".videos" / "a.mp4")
    assert paths(tmp_path / ".videos") == [str(tmp_path / ".videos" / "a.mp4")]


def test_symlink_loop_terminates_each_file_once(tmp_path):
    root = tmp_path / "root"
    touch(root / "a.mp4")
    touch(root / "sub" / "b.mp4")
    os.symlink("..", root / "sub" / "loop")  # sub/loop -> root
    os.symlink(str(root), root / "sub" / "abs_loop")
    found = paths(root)
    assert found == [str(root / "a.mp4"), str(root / "sub" / "b.mp4")]


def test_symlinked_folder_outside_is_followed_with_link_path(tmp_path):
    outside = tmp_path / "outside"
    touch(outside / "o.mp4")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(str(outside), root / "link")
    assert paths(root) == [str(root / "link" / "o.mp4")]


def test_same_folder_reached_twice_yields_files_once(tmp_path):
    touch(tmp_path / "x" / "a.mp4")
    os.symlink(str(tmp_path / "x"), tmp_path / "y")
    found = paths(tmp_path)
    assert found == [str(tmp_path / "x" / "a.mp4")]


def test_broken_symlink_does_not_crash(tmp_path):
    touch(tmp_path / "good.mp4")
    os.symlink(str(tmp_path / "missing.mp4"), tmp_path / "broken.mp4")
    os.symlink(str(tmp_path / "missing_dir"), tmp_path / "broken_dir")
    assert paths(tmp_path) == [str(tmp_path / "good.mp4")]


def test_symlinked_file_is_reported_under_link_path(tmp_path):
    real = touch(tmp_path / "real.mp4", b"abc")
    os.symlink(str(real), tmp_path / "alias.mp4")
    files = list(discover_files([str(tmp_path)]))
    assert [f.path for f in files] == [str(tmp_path / "alias.mp4"), str(real)]
    assert all(f.size_bytes == 3 for f in files)


@pytest.mark.parametrize("name", ["notes.txt", ".hidden.mp4", "thumb.jpg"])
def test_explicit_file_argument_is_always_a_candidate(tmp_path, name):
    f = touch(tmp_path / name, b"data")
    files = list(discover_files([str(f)]))
    assert [x.path for x in files] == [str(f)]
    assert files[0].size_bytes == 4


def test_explicit_file_and_its_folder_yield_once(tmp_path):
    f = touch(tmp_path / "a.mp4")
    assert [x.path for x in discover_files([str(f), str(tmp_path)])] == [str(f)]


def test_overlapping_roots_yield_each_file_once(tmp_path):
    touch(tmp_path / "sub" / "a.mp4")
    touch(tmp_path / "b.mp4")
    found = [f.path for f in discover_files([str(tmp_path / "sub"), str(tmp_path)])]
    assert found == [str(tmp_path / "sub" / "a.mp4"), str(tmp_path / "b.mp4")]


def test_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    touch(tmp_path / "v" / "a.mp4")
    monkeypatch.chdir(tmp_path)
    assert paths("v") == [str(tmp_path / "v" / "a.mp4")]


def test_nonexistent_root_raises_naming_path(tmp_path):
    missing = str(tmp_path / "does" / "not" / "exist")
    with pytest.raises(FileNotFoundError) as err:
        list(discover_files([missing]))
    assert missing in str(err.value)


def test_root_typed_in_another_spelling_resolves_to_the_name_on_disk(tmp_path):
    import unicodedata

    nfd = unicodedata.normalize("NFD", "café")  # as macOS writes it
    folder = tmp_path / nfd
    touch(folder / "a.mp4")
    typed = str(tmp_path / unicodedata.normalize("NFC", "café"))  # as a keyboard types it
    assert typed != str(folder)
    assert resolve_root(typed) == str(folder)
    assert [f.path for f in discover_files([resolve_root(typed)])] == [str(folder / "a.mp4")]

    latin1 = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.mp4")  # a Latin-1 byte, not UTF-8
    touch(Path(latin1))
    pasted = str(tmp_path) + "/caf\\xe9.mp4"  # the form vidx prints, pasted back
    assert resolve_root(pasted) == latin1
    assert resolve_root(str(folder)) == str(folder)  # as on disk: unchanged


def test_resolve_root_of_a_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        resolve_root(str(tmp_path / "nope.mp4"))


def test_empty_folder(tmp_path):
    assert paths(tmp_path) == []


# -- fingerprint ----------------------------------------------------------------------------

MIB = 1 << 20


@pytest.fixture
def big_file(tmp_path) -> Path:
    data = os.urandom(3 * MIB + 12345)
    return touch(tmp_path / "big.bin", data)


def test_fingerprint_is_hex_and_stable(big_file):
    fp = fingerprint_file(str(big_file))
    assert len(fp) == 32 and int(fp, 16) >= 0
    assert fingerprint_file(str(big_file)) == fp
    assert fingerprint_file(str(big_file), big_file.stat().st_size) == fp


def test_fingerprint_equal_for_copy_and_rename(tmp_path, big_file):
    fp = fingerprint_file(str(big_file))
    copy = tmp_path / "copy.bin"
    shutil.copyfile(big_file, copy)
    assert fingerprint_file(str(copy)) == fp
    moved = tmp_path / "elsewhere" / "renamed.mp4"
    moved.parent.mkdir()
    os.rename(big_file, moved)
    assert fingerprint_file(str(moved)) == fp


def test_fingerprint_changes_when_middle_byte_changes(big_file):
    before = fingerprint_file(str(big_file))
    size = big_file.stat().st_size
    with open(big_file, "r+b") as fh:
        fh.seek(size // 2)
        b = fh.read(1)
        fh.seek(size // 2)
        fh.write(bytes([b[0] ^ 0xFF]))
    assert big_file.stat().st_size == size
    assert fingerprint_file(str(big_file)) != before


@pytest.mark.parametrize("where", ["head", "tail"])
def test_fingerprint_changes_when_head_or_tail_changes(big_file, where):
    before = fingerprint_file(str(big_file))
    size = big_file.stat().st_size
    pos = 10 if where == "head" else size - 10
    with open(big_file, "r+b") as fh:
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ 0x01]))
    assert fingerprint_file(str(big_file)) != before


def test_fingerprint_changes_after_append(big_file):
    before = fingerprint_file(str(big_file))
    with open(big_file, "ab") as fh:
        fh.write(b"\0")
    assert fingerprint_file(str(big_file)) != before


def test_small_file_hashed_whole(tmp_path):
    data = bytearray(os.urandom(600 * 1024))  # < 3 x 256 KiB: every byte counts
    f = touch(tmp_path / "s.bin", bytes(data))
    before = fingerprint_file(str(f))
    data[123_457] ^= 0x01
    f.write_bytes(bytes(data))
    assert fingerprint_file(str(f)) != before


def test_fingerprint_of_different_sizes_with_same_prefix(tmp_path):
    a = touch(tmp_path / "a", b"\0" * 100)
    b = touch(tmp_path / "b", b"\0" * 101)
    assert fingerprint_file(str(a)) != fingerprint_file(str(b))


def test_fingerprint_of_empty_file(tmp_path):
    a = touch(tmp_path / "a", b"")
    b = touch(tmp_path / "b", b"")
    assert fingerprint_file(str(a)) == fingerprint_file(str(b))


def test_fingerprint_missing_file_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        fingerprint_file(str(tmp_path / "missing"))
