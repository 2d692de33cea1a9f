"""File names that are not UTF-8: stored, read back and shown without loss (indexer.pathtext)."""

from __future__ import annotations

import os
import subprocess

import duckdb
import pytest

from indexer.pathtext import display_path, from_stored, is_storable_path, shell_quote, to_stored

LATIN1 = os.fsdecode(b"/archive/d\xe9j\xe0 vu/caf\xe9 'n' cr\xe8me.mp4")  # as Python reads it from disk


@pytest.mark.parametrize("path", ["/a/b.mp4", "/a/café 日本.mkv", "/a/it's -x.mp4", LATIN1,
                                  os.fsdecode(b"/\x80\xff\xc3"), "/a/\U0001F600.mp4"])
def test_stored_text_is_utf8_and_reads_back_as_the_same_file(path):
    stored = to_stored(path)
    stored.encode("utf-8")  # storable: no lone surrogate left
    assert from_stored(stored) == path
    assert os.fsencode(from_stored(stored)) == os.fsencode(path)


def test_valid_utf8_names_are_stored_unchanged():
    for path in ["/a/b.mp4", "/a/café 日本.mkv", "/a/\U0001F600.mp4"]:
        assert to_stored(path) == path and from_stored(path) == path


def test_duckdb_round_trip_and_prefix_matching():
    con = duckdb.connect()
    con.execute("CREATE TABLE v (path VARCHAR)")
    con.execute("INSERT INTO v VALUES (?)", [to_stored(LATIN1)])
    (back,), = con.execute("SELECT path FROM v").fetchall()
    assert from_stored(back) == LATIN1
    folder = os.path.dirname(LATIN1) + "/"
    assert con.execute("SELECT count(*) FROM v WHERE starts_with(path, ?)", [to_stored(folder)]).fetchone()[0] == 1
    with pytest.raises(duckdb.InvalidInputException, match="surrogate"):
        con.execute("INSERT INTO v VALUES (?)", [LATIN1])  # why the mapping exists


def test_only_names_holding_the_mapping_characters_are_unstorable():
    assert is_storable_path(LATIN1) and is_storable_path("/a/café.mp4")
    assert not is_storable_path("/a/caf\U000F00E9.mp4")  # would read back as the byte 0xE9
    assert not is_storable_path("/a/\ud800.mp4")  # a surrogate no file system produces


def test_display_shows_undecodable_bytes_as_escapes():
    assert display_path(LATIN1) == "/archive/d\\xe9j\\xe0 vu/caf\\xe9 'n' cr\\xe8me.mp4"
    assert display_path("/a/café.mp4") == "/a/café.mp4"
    display_path(LATIN1).encode("utf-8")


def test_shell_quote_names_the_same_bytes_in_bash(tmp_path):
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/-x caf\xe9 'q' $HOME.mp4")
    with open(name, "wb") as fh:
        fh.write(b"ok")
    word = shell_quote(name)
    word.encode("utf-8")
    out = subprocess.run(["bash", "-c", f"cat -- {word}"], capture_output=True, check=True).stdout
    assert out == b"ok"
    assert shell_quote("/a/b c.mp4") == "'/a/b c.mp4'"


def test_spellings_cover_pasted_output_and_both_normalizations():
    import unicodedata

    from indexer.pathtext import spellings

    assert spellings("/a/b.mp4") == ["/a/b.mp4"]
    assert spellings(display_path(LATIN1))[1] == LATIN1  # what vidx printed, pasted back
    nfc = "/a/caf\u00e9.mp4"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc and nfd in spellings(nfc) and nfc in spellings(nfd)
    assert spellings("/a/x\\x41.mp4") == ["/a/x\\x41.mp4"]  # \x41 is not a byte vidx escapes
