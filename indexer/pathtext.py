"""File names as text: the one place that turns a file-system path into text the index can
store, back again, and into text a terminal, a shell or a report can show.

A POSIX file name is bytes. Python decodes it as UTF-8 and keeps each byte that is not UTF-8 as
a lone surrogate (U+DC80-U+DCFF, "surrogateescape"), so ``open()`` still finds the file. Archives
from older systems hold such names (Latin-1 "caf\\xe9.mp4"), and they are often read-only, so
"rename it" is no answer. DuckDB stores UTF-8 text only, which a lone surrogate is not.

So a path is stored with each such byte written as a character of the Supplementary Private
Use Area-A, U+F0080-U+F00FF (byte 0xNN as U+F00NN), and read back exactly. Ordinary names
(every valid UTF-8 name) are stored unchanged. The mapping is reversible for every name except
one that already holds a character of U+F0080-U+F00FF (a private-use character nobody puts in a
file name); such a name would read back as a different file, so it is reported and not stored.

Paths in memory are always the file-system form (surrogates); the stored form exists only
between the store's SQL and its callers.
"""

from __future__ import annotations

import re

_STORED_BASE = 0xF0000  # byte 0xNN <-> U+F00NN
_SURROGATE_BASE = 0xDC00  # byte 0xNN <-> U+DCNN (Python's surrogateescape)
_TO_STORED = {_SURROGATE_BASE + b: _STORED_BASE + b for b in range(0x80, 0x100)}
_FROM_STORED = {v: k for k, v in _TO_STORED.items()}
_SURROGATES = re.compile("[\udc80-\udcff]")
_STORED_BYTES = re.compile("[\U000F0080-\U000F00FF]")
_ANY_SURROGATE = re.compile("[\ud800-\udfff]")

UNSTORABLE_NAME = ("its name holds a private-use character (U+F0080-U+F00FF) that the index uses to "
                   "store non-UTF-8 names; rename the file")


def is_storable_path(path: str) -> bool:
    """True when ``path`` can be stored and read back as the same file name."""
    if path.isascii():
        return True
    if _STORED_BYTES.search(path):
        return False
    # Surrogates other than surrogateescape's come from no file system.
    return not any(not 0xDC80 <= ord(m.group()) <= 0xDCFF for m in _ANY_SURROGATE.finditer(path))


def to_stored(path: str) -> str:
    """The text stored for ``path`` (unchanged unless it holds undecodable bytes)."""
    if path.isascii() or not _SURROGATES.search(path):
        return path
    return path.translate(_TO_STORED)


def from_stored(text: str) -> str:
    """The file-system path of stored ``text`` (the inverse of :func:`to_stored`)."""
    if text is None or text.isascii() or not _STORED_BYTES.search(text):
        return text
    return text.translate(_FROM_STORED)


def display_path(path: str) -> str:
    """``path`` printable anywhere: undecodable bytes shown as \\xNN escapes."""
    if path.isascii():
        return path
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_DISPLAY_ESCAPE = re.compile(r"\\x([89a-fA-F][0-9a-fA-F])")


def spellings(path: str) -> list[str]:
    """``path`` and the other ways a person may have typed the same file name, for a file or
    folder named on the command line (lookups, and the roots of ``vidx index``; never while
    walking folders, which reads names from the disk):

    * the ``\\xNN`` form vidx prints for a byte that is not UTF-8, pasted back from its output;
    * the other Unicode normalization: names written on macOS are often decomposed (NFD, "e" +
      combining accent) while keyboards type composed characters (NFC).

    The first item is ``path`` itself; the list has no repeats.
    """
    import unicodedata

    out = [path]
    if "\\x" in path:
        out.append(_DISPLAY_ESCAPE.sub(lambda m: chr(_SURROGATE_BASE + int(m.group(1), 16)), path))
    if not path.isascii():
        for form in ("NFC", "NFD"):
            try:
                out.append(unicodedata.normalize(form, path))
            except ValueError:
                pass
    return list(dict.fromkeys(out))


def shell_quote(path: str) -> str:
    """``path`` as one bash/zsh word, pasteable even when its name is not UTF-8: like
    ``shlex.quote``, with undecodable bytes as ``$'\\xNN'`` (as GNU ls quotes them)."""
    import shlex

    if path.isascii() or not _SURROGATES.search(path):
        return shlex.quote(path)
    parts, plain = [], []
    for ch in path:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            if plain:
                parts.append(shlex.quote("".join(plain)))
                plain = []
            parts.append(f"$'\\x{ord(ch) - _SURROGATE_BASE:02x}'")
        else:
            plain.append(ch)
    if plain:
        parts.append(shlex.quote("".join(plain)))
    return "".join(parts)


__all__ = ["UNSTORABLE_NAME", "display_path", "from_stored", "is_storable_path", "shell_quote", "spellings",
           "to_stored"]
