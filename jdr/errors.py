"""The one error type for bad input files, below every package that reads one (models, index, data, vq)."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. The message is a single line: `path:line: what is wrong` (line omitted when not applicable)."""

    def __init__(self, path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
