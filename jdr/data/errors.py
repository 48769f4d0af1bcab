"""The one error type for bad input files."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. The message is a single line: `path:line: what is wrong` (line omitted when not applicable)."""

    def __init__(self, path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


def whitespace_rows(path, columns: int, layout: str):
    """Yield `(line_no, fields)` of a whitespace-separated file (TREC qrels, TREC runs), skipping blank lines.

    A missing file or a row without exactly `columns` fields raises `DataError` naming the file and line; `layout`
    names the expected fields for the message, e.g. "qid Q0 docid rank score tag".
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            cols = line.split()
            if not cols:
                continue
            if len(cols) != columns:
                raise DataError(path, f"expected {columns} columns ({layout}), got {len(cols)}", line_no)
            yield line_no, cols
