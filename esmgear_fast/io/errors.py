"""Exceptions raised by :mod:`esmgear_fast.io`."""
from __future__ import annotations

import os
from typing import Optional, Union


class StructureParseError(ValueError):
    """A structure file could not be turned into a :class:`~esmgear_fast.io.Protein`.

    Raised for missing, empty, truncated, binary or otherwise malformed files, files of an unknown format,
    files without any protein residue, and requests for chains the file does not have. The message always
    starts with the file path, followed by the problem (and the line number where one applies); the
    original low-level exception, if any, is chained as ``__cause__``.

    Attributes:
        path: the file (``str``), or ``None`` when parsing in-memory text without a name.
        problem: the problem description without the path prefix.
    """

    def __init__(self, path: Optional[Union[str, os.PathLike]], problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path or '<text>'}: {problem}")

    def __reduce__(self):  # keep picklable across worker processes
        return (type(self), (self.path, self.problem))


class ChainNotFoundError(StructureParseError):
    """A requested chain is not in the file (or has no protein residue); the message lists the chains."""
