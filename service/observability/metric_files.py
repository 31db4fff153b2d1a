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

``MultiProcessSample`` is prometheus_client's multiprocess value with two costs of the request
path removed (measured in docs/benchmarks.md): a getpid() system call on every write (the pid is
kept per process and renewed after a fork) and a lock acquisition per sample (``add_all``
writes all the samples of one request under one).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

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


class _ProcessFiles:
    """This process's sample files, its values and the one lock every write takes; re-made in
    a forked child (which then opens files named after its own pid at its next write)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.files: dict[str, PreallocatingMmapedDict] = {}
        self.values: list[MultiProcessSample] = []


_process = _ProcessFiles()


def _after_fork_in_child() -> None:
    global _process
    inherited = _process
    _process = _ProcessFiles()
    _process.values = inherited.values  # their files are re-opened under the child's pid
    for file in inherited.files.values():
        with contextlib.suppress(Exception):  # the parent's maps: the child writes its own
            file.close()  # type: ignore[no-untyped-call]


os.register_at_fork(after_in_child=_after_fork_in_child)


class MultiProcessSample:
    """One sample in this process's multiprocess files: prometheus_client's ``MmapedValue``
    (values.MultiProcessValue; same files, keys and format, so its readers are unchanged), with
    the pid read once per process rather than by a getpid() call on every write, and with
    :func:`add_all`, which writes many samples under one lock acquisition.

    prometheus_client takes this class from ``values.ValueClass`` when a metric is created.
    """

    _multiprocess = True

    def __init__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Sequence[str],
        labelvalues: Sequence[str],
        help_text: str,
        multiprocess_mode: str = "",
        **_kwargs: Any,
    ) -> None:
        self._params = typ, metric_name, name, labelnames, labelvalues, help_text, multiprocess_mode
        self._owner: _ProcessFiles | None = None
        process = _process
        with process.lock:
            self._open(process)
            process.values.append(self)

    def _open(self, process: _ProcessFiles) -> None:
        """Point at this process's file (opened on first use) and read the stored value."""
        typ, metric_name, name, labelnames, labelvalues, help_text, mode = self._params
        prefix = f"{typ}_{mode}" if typ == "gauge" else typ
        file = process.files.get(prefix)
        if file is None:
            folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
            filename = os.path.join(folder, f"{prefix}_{process.pid}.db")
            file = process.files[prefix] = PreallocatingMmapedDict(filename)
        self._owner = process
        self._file = file
        self._key = mmap_dict.mmap_key(
            metric_name, name, list(labelnames), list(labelvalues), help_text
        )
        self._value, self._timestamp = file.read_value(self._key)  # type: ignore[no-untyped-call]

    def _write(self, process: _ProcessFiles, value: float, timestamp: float) -> None:
        """Store ``value`` (call with ``process.lock`` held)."""
        if self._owner is not process:  # first write after a fork: this process's own file
            self._open(process)
        self._value, self._timestamp = value, timestamp
        self._file.write_value(self._key, value, timestamp)  # type: ignore[no-untyped-call]

    def inc(self, amount: float) -> None:
        process = _process
        with process.lock:
            if self._owner is not process:
                self._open(process)
            self._write(process, self._value + amount, 0.0)

    def set(self, value: float, timestamp: float | None = None) -> None:
        process = _process
        with process.lock:
            self._write(process, value, timestamp or 0.0)

    def set_exemplar(self, exemplar: Any) -> None:
        return None  # prometheus_client has no exemplars in multiprocess mode either

    def get(self) -> float:
        process = _process
        with process.lock:
            if self._owner is not process:
                self._open(process)
            return float(self._value)

    def get_exemplar(self) -> None:
        return None


class SetTo(float):
    """An amount for ``add_all`` that replaces the sample's value instead of adding to it (a
    gauge's ``set``, batched with the request's other samples)."""


def add_all(samples: Iterable[tuple[Any, float]], failed: Callable[[BaseException], None]) -> None:
    """Add each amount to its sample (a MultiProcessSample, or any prometheus_client value), or
    set it to a ``SetTo`` amount; the multiprocess ones under one acquisition of the lock. A
    sample that cannot be written is passed to ``failed`` and the others are still written."""
    process = _process
    others: list[tuple[Any, float]] = []
    with process.lock:
        for sample, amount in samples:
            if not isinstance(sample, MultiProcessSample):
                others.append((sample, amount))
                continue
            try:
                if sample._owner is not process:
                    sample._open(process)
                value = amount if type(amount) is SetTo else sample._value + amount
                sample._write(process, value, 0.0)
            except Exception as exc:  # a full or vanished folder: this sample is lost, counted
                failed(exc)
    for sample, amount in others:
        try:
            if type(amount) is SetTo:
                sample.set(float(amount))
            else:
                sample.inc(amount)
        except Exception as exc:
            failed(exc)
