"""The model repository: ``<root>/mnist/<version>/{model.onnx, card.json, ...}``, Triton-compatible.

Training publishes into it, serving reads from it; neither imports the other. Standard library
only. Publishing is atomic: a reader sees a whole version or none.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.model.contract import (
    CARD_FILE,
    MODEL_FILE,
    MODEL_NAME,
    TRITON_CONFIG_FILE,
    triton_config,
)

STAGING_PREFIX = ".staging-"
LOCK_FILE = ".publish.lock"


class RepositoryError(Exception):
    """A version is missing, incomplete or does not match its card."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_durably(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_path(path.parent)


@dataclass(frozen=True)
class ModelVersion:
    """One published version on disk."""

    version: int
    path: Path

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def card_path(self) -> Path:
        return self.path / CARD_FILE

    def read_card(self) -> dict[str, Any]:
        """The parsed card.json; RepositoryError when it is missing or not a JSON object."""
        try:
            card = json.loads(self.card_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"version {self.version}: unreadable {CARD_FILE}: {exc}") from exc
        if not isinstance(card, dict):
            raise RepositoryError(f"version {self.version}: {CARD_FILE} is not a JSON object")
        return card

    def read_verified(self) -> tuple[bytes, dict[str, Any]]:
        """The ONNX bytes and the card, after checking size and sha256 against the card."""
        card = self.read_card()
        try:
            onnx_bytes = self.model_path.read_bytes()
        except OSError as exc:
            raise RepositoryError(
                f"version {self.version}: unreadable {MODEL_FILE}: {exc}"
            ) from exc
        expected = card.get("sha256")
        actual = sha256_bytes(onnx_bytes)
        if expected != actual:
            raise RepositoryError(
                f"version {self.version}: {MODEL_FILE} sha256 {actual} does not match the card's "
                f"{expected}"
            )
        if card.get("size") != len(onnx_bytes):
            raise RepositoryError(
                f"version {self.version}: {MODEL_FILE} has {len(onnx_bytes)} bytes, the card says "
                f"{card.get('size')}"
            )
        if card.get("version") != self.version:
            raise RepositoryError(
                f"version {self.version}: the card names version {card.get('version')}"
            )
        return onnx_bytes, card

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        """Names, sizes and mtimes of the version's files: changes when any file changes."""
        entries = []
        for name in (MODEL_FILE, CARD_FILE):
            try:
                st = (self.path / name).stat()
            except OSError:
                entries.append((name, -1, -1))
            else:
                entries.append((name, st.st_size, st.st_mtime_ns))
        return tuple(entries)


class ModelRepository:
    """A folder of versioned models, laid out as Triton expects."""

    def __init__(self, root: Path | str, name: str = MODEL_NAME) -> None:
        # absolute: publish checks that every file lands inside the version by resolved paths
        self.root = Path(root).absolute()
        self.name = name
        self.model_dir = self.root / name

    def versions(self) -> list[ModelVersion]:
        """Complete versions (an integer folder holding model.onnx and card.json), oldest first."""
        if not self.model_dir.is_dir():
            return []
        found = []
        for entry in self.model_dir.iterdir():
            if not (entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0):
                continue
            version = ModelVersion(int(entry.name), entry)
            if version.model_path.is_file() and version.card_path.is_file():
                found.append(version)
        return sorted(found, key=lambda v: v.version)

    def get(self, version: int) -> ModelVersion:
        """One version by number; RepositoryError when it is not there or not complete."""
        for candidate in self.versions():
            if candidate.version == version:
                return candidate
        raise RepositoryError(
            f"model {self.name!r} has no complete version {version} in {self.root}"
        )

    def latest(self) -> ModelVersion | None:
        """The highest complete version, or None."""
        versions = self.versions()
        return versions[-1] if versions else None

    @contextlib.contextmanager
    def _publish_lock(self) -> Iterator[None]:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with (self.model_dir / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # one publisher at a time takes a number
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _next_number(self) -> int:
        numbers = [
            int(entry.name)
            for entry in self.model_dir.iterdir()
            if entry.is_dir() and entry.name.isdigit()
        ]
        return max(numbers, default=0) + 1

    def _clean_stale_staging(self) -> None:
        # under the lock no publish is in flight, so any staging folder is a crash's leftover
        for entry in self.model_dir.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(entry, ignore_errors=True)

    def publish(
        self,
        onnx_bytes: bytes,
        card: Mapping[str, Any],
        extra_files: Mapping[str, bytes] | None = None,
    ) -> ModelVersion:
        """Write a new version atomically and return it.

        The card gets ``name``, ``version``, ``sha256`` and ``size`` filled in here. ``extra_files``
        (relative paths, e.g. the report) are written into the same version folder.
        """
        with self._publish_lock():
            self._clean_stale_staging()
            self._ensure_triton_config()
            number = self._next_number()
            staging = self.model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                full_card = dict(card)
                full_card.update(
                    name=self.name,
                    version=number,
                    sha256=sha256_bytes(onnx_bytes),
                    size=len(onnx_bytes),
                )
                files = {MODEL_FILE: onnx_bytes}
                files.update(extra_files or {})
                files[CARD_FILE] = (json.dumps(full_card, indent=2, sort_keys=True) + "\n").encode()
                for relative, data in files.items():
                    target = staging / relative
                    if staging not in target.resolve().parents:
                        raise RepositoryError(f"refusing to write outside the version: {relative}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _write_durably(target, data)
                for folder in {(staging / rel).parent for rel in files}:
                    _fsync_path(folder)
                final = self.model_dir / str(number)
                os.replace(staging, final)  # rename is atomic on POSIX: all or nothing
                _fsync_path(self.model_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return ModelVersion(number, final)

    def _ensure_triton_config(self) -> None:
        path = self.model_dir / TRITON_CONFIG_FILE
        text = triton_config(self.name)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_atomically(path, text.encode())
