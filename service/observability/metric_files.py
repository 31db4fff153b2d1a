"""prometheus_client's multiprocess files, made to fail with an error instead of a SIGBUS.

prometheus_client keeps each worker's samples in a file it grows with ``truncate`` and maps into
memory. ``truncate`` makes a sparse file: no disk block is reserved, so when the file system is
full the first write to a new page of the map is a SIGBUS, which kills the worker, whose
replacement dies the same way as soon as it records a new label set. ``PreallocatingMmapedDict``
reserves the blocks with ``posix_fallocate`` before it writes to them, so a full (or vanished)
folder raises ``OSError`` at the call that records the sample, which the metrics layer catches
(service.observability.metrics): the request is answered and the sample is lost.

The file format and sizes are prometheus_client's own (readers are unchanged); only the pages
about to be written are reserved, so the files take no more room than before.
"""

from __future__ import annotations

import mmap
import os
import struct

from prometheus_client import mmap_dict, values

_HEADER_BYTES = 8


class PreallocatingMmapedDict(mmap_dict.MmapedDict):
    """prometheus_client's MmapedDict with every page reserved on disk before it is written.

    Raises OSError (ENOSPC, ENOENT, ...) where the original would die of SIGBUS or raise.
    """

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if read_mode:
            super().__init__(filename, read_mode=True)  # type: ignore[no-untyped-call]
            return
        self._f = open(filename, "a+b")  # noqa: SIM115 - kept open for the map, as upstream does
        self._fname = filename
        try:
            fd = self._f.fileno()
            capacity = os.fstat(fd).st_size
            if capacity == 0:
                capacity = mmap_dict._INITIAL_MMAP_SIZE
                self._f.truncate(capacity)
            os.posix_fallocate(fd, 0, _HEADER_BYTES)
            self._capacity = capacity
            self._m = mmap.mmap(fd, capacity, access=mmap.ACCESS_WRITE)
        except BaseException:
            self._f.close()
            raise
        self._positions: dict[str, int] = {}
        self._used = mmap_dict._unpack_integer(self._m, 0)[0]
        if self._used == 0:
            self._used = _HEADER_BYTES
            mmap_dict._pack_integer(self._m, 0, self._used)
        else:
            for key, _, _, pos in self._read_all_values():  # type: ignore[no-untyped-call]
                self._positions[key] = pos

    def _init_value(self, key: str) -> None:
        """Add ``key`` with value 0 at the end of the used part, its pages reserved first."""
        encoded = key.encode("utf-8")
        padded = encoded + (b" " * (8 - (len(encoded) + 4) % 8))
        value = struct.pack(f"i{len(padded)}sdd".encode(), len(encoded), padded, 0.0, 0.0)
        fd = self._f.fileno()
        while self._used + len(value) > self._capacity:
            self._capacity *= 2
            self._f.truncate(self._capacity)
            self._m = mmap.mmap(fd, self._capacity)
        os.posix_fallocate(fd, self._used, len(value))
        self._m[self._used : self._used + len(value)] = value
        self._used += len(value)
        mmap_dict._pack_integer(self._m, 0, self._used)
        self._positions[key] = self._used - 16


def install() -> None:
    """Make prometheus_client create its multiprocess files with PreallocatingMmapedDict."""
    values.MmapedDict = PreallocatingMmapedDict  # type: ignore[attr-defined]
