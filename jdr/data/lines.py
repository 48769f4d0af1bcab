"""The line readers every reader is built on; bad input raises `jdr.errors.DataError`.

Every text file jdr reads goes through `text_lines`, so a non-UTF-8 byte, like any other bad input, is one line
naming the file and the line (a bare `'utf-8' codec can't decode byte 0xe9` names neither).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from jdr.errors import DataError


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield `(line_no, line)` (1-based, line ending stripped) of a UTF-8 text file, streaming.

    A missing file, or a byte sequence that is not UTF-8, raises `DataError` naming the file, the line and the
    byte. A UTF-8 byte-order mark on the first line is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    path, f"not UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line", line_no
                ) from None
            if line_no == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield line_no, line.rstrip("\r\n")


def jsonl_records(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield `(line_no, dict)` for each non-blank line of a JSONL file; bad JSON or a non-object raises DataError."""
    for line_no, line in text_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"bad JSON: {e.msg} (column {e.colno})", line_no) from None
        if not isinstance(rec, dict):
            raise DataError(path, f"expected a JSON object, got {type(rec).__name__}", line_no)
        yield line_no, rec


def tsv_rows(path: str | os.PathLike, ncols: int, what: str) -> Iterator[tuple[int, list[str]]]:
    """Yield `(line_no, columns)` for each non-blank line, requiring exactly `ncols` non-empty tab-separated
    columns (`what` names them for the message)."""
    for line_no, line in text_lines(path):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != ncols:
            raise DataError(path, f"expected {ncols} tab-separated columns ({what}), got {len(cols)}", line_no)
        if any(not c.strip() for c in cols):
            raise DataError(path, f"empty column ({what})", line_no)
        yield line_no, cols


def whitespace_rows(path, columns: int, layout: str) -> Iterator[tuple[int, list[str]]]:
    """Yield `(line_no, fields)` of a whitespace-separated file (TREC qrels, TREC runs), skipping blank lines.

    A missing file or a row without exactly `columns` fields raises `DataError` naming the file and line; `layout`
    names the expected fields for the message, e.g. "qid Q0 docid rank score tag".
    """
    for line_no, line in text_lines(path):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != columns:
            raise DataError(path, f"expected {columns} columns ({layout}), got {len(cols)}", line_no)
        yield line_no, cols
