"""The model repository: ``<root>/mnist/<version>/{model.onnx, card.json, ...}``, Triton-compatible.

Training publishes into it, serving reads from it; neither imports the other. Standard library
only. Publishing is atomic: a reader sees a whole version or none.

Which versions serve is data here too: ``config.pbtxt`` carries Triton's ``version_policy`` (the
versions to load) and ``labels.json`` beside it says which one is ``stable`` and which one, if
any, is a ``canary`` (a share of the traffic) or a ``shadow`` (a sample of the traffic, run after
the answer). ``labels.json`` is what the service reads; it is written last, in one atomic
replace, so a change is seen whole or not at all. Without ``labels.json`` the service follows the
``version_policy`` as Triton does (the highest listed or the highest version).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from service.model.contract import (
    CARD_FILE,
    LABELS_FILE,
    MODEL_FILE,
    MODEL_NAME,
    TRITON_CONFIG_FILE,
    triton_config,
)

STAGING_PREFIX = ".staging-"
DELETING_PREFIX = ".deleting-"
LOCK_FILE = ".publish.lock"
#: rollback remembers this many earlier stable versions
HISTORY_LENGTH = 20

TrialMode = Literal["canary", "shadow"]


class RepositoryError(Exception):
    """A version is missing, incomplete or does not match its card."""


class RepositoryUnavailable(RepositoryError):
    """The model folder itself cannot be listed (missing, unmounted, no permission)."""


class ModelTooLarge(RepositoryError):
    """model.onnx (by its card, or on disk) is over the size limit; nothing was read."""


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
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise RepositoryError(f"version {self.version}: unreadable {CARD_FILE}: {exc}") from exc
        if not isinstance(card, dict):
            raise RepositoryError(f"version {self.version}: {CARD_FILE} is not a JSON object")
        return card

    def read_verified(self, max_bytes: int | None = None) -> tuple[bytes, dict[str, Any]]:
        """The ONNX bytes and the card, after checking size and sha256 against the card.

        With ``max_bytes``, ModelTooLarge is raised from the card's ``size`` (then from the file's
        size on disk) before model.onnx is read, so an oversized file never reaches memory.
        """
        card = self.read_card()
        if max_bytes is not None:
            declared = card.get("size")
            if not isinstance(declared, int) or isinstance(declared, bool) or declared < 0:
                raise RepositoryError(f"version {self.version}: the card has no valid size")
            if declared > max_bytes:
                raise ModelTooLarge(
                    f"version {self.version}: the card says {MODEL_FILE} has {declared} bytes, "
                    f"over MAX_MODEL_BYTES={max_bytes}"
                )
        try:
            with self.model_path.open("rb") as handle:
                on_disk = os.fstat(handle.fileno()).st_size
                if max_bytes is not None and on_disk > max_bytes:
                    raise ModelTooLarge(
                        f"version {self.version}: {MODEL_FILE} has {on_disk} bytes, over "
                        f"MAX_MODEL_BYTES={max_bytes}"
                    )
                limit = -1 if max_bytes is None else max_bytes + 1
                onnx_bytes = handle.read(limit)
        except OSError as exc:
            raise RepositoryError(
                f"version {self.version}: unreadable {MODEL_FILE}: {exc}"
            ) from exc
        if max_bytes is not None and len(onnx_bytes) > max_bytes:
            raise ModelTooLarge(f"version {self.version}: {MODEL_FILE} grew over MAX_MODEL_BYTES")
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

    def fingerprint(self) -> tuple[tuple[str, int, int, int], ...]:
        """Name, size, mtime and inode of the folder and every file directly in it.

        It changes when a file is added, removed, rewritten or replaced (a rename gives a new
        inode), so a version rejected for a missing or broken file is looked at again once fixed.
        """
        try:
            folder = self.path.stat()
            names = sorted(entry.name for entry in os.scandir(self.path) if entry.is_file())
        except OSError:
            return (("", -1, -1, -1),)
        entries = [("", 0, folder.st_mtime_ns, folder.st_ino)]
        for name in names:
            try:
                st = (self.path / name).stat()
            except OSError:
                entries.append((name, -1, -1, -1))
            else:
                entries.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(entries)


@dataclass(frozen=True)
class Trial:
    """A version tried on live traffic beside ``stable``.

    ``share`` is a fraction in [0, 1]: for a canary, of the unversioned requests it answers; for a
    shadow, of the requests it also runs after the stable version has answered.
    """

    mode: TrialMode
    version: int
    share: float

    def __post_init__(self) -> None:
        if self.mode not in get_args(TrialMode):
            raise RepositoryError(f"trial mode must be canary or shadow, not {self.mode!r}")
        if not (isinstance(self.version, int) and self.version > 0):
            raise RepositoryError(f"trial version must be a positive integer, not {self.version}")
        if not 0.0 <= self.share <= 1.0:
            raise RepositoryError(f"trial share must be in [0, 1], not {self.share}")

    def describe(self) -> str:
        if self.mode == "canary":
            return f"canary {self.version} ({self.share * 100:g}% of answers)"
        return f"shadow {self.version} (sample {self.share:g})"


@dataclass(frozen=True)
class ServingState:
    """What the repository says should serve: the content of labels.json.

    ``stable`` None means no labels file: follow the version policy, ``policy_versions`` (the
    versions listed by a ``specific`` policy; empty for ``latest``). ``history`` holds earlier
    stable versions, oldest first; ``loaded`` is False after the repository extension's unload.
    """

    stable: int | None = None
    trial: Trial | None = None
    history: tuple[int, ...] = ()
    loaded: bool = True
    policy_versions: tuple[int, ...] = ()

    @property
    def pinned(self) -> bool:
        return self.stable is not None

    def versions(self) -> tuple[int, ...]:
        """The versions to load (Triton's ``specific`` policy), stable first."""
        if self.stable is None:
            return self.policy_versions
        found = [self.stable]
        if self.trial is not None and self.trial.version != self.stable:
            found.append(self.trial.version)
        return tuple(found)

    def label_of(self, version: int) -> str | None:
        """``stable``, ``canary``, ``shadow`` or None for ``version``."""
        if version == self.stable:
            return "stable"
        if self.trial is not None and self.trial.version == version:
            return self.trial.mode
        return None

    def to_json(self) -> dict[str, Any]:
        trial = None
        if self.trial is not None:
            key = "percent" if self.trial.mode == "canary" else "sample"
            value = self.trial.share * 100 if self.trial.mode == "canary" else self.trial.share
            trial = {"mode": self.trial.mode, "version": self.trial.version, key: value}
        return {
            "stable": self.stable,
            "trial": trial,
            "history": list(self.history),
            "loaded": self.loaded,
        }

    @classmethod
    def from_json(cls, data: object) -> ServingState:
        """The state from parsed labels.json; RepositoryError says what is wrong with it."""
        if not isinstance(data, dict):
            raise RepositoryError(f"{LABELS_FILE} is not a JSON object")
        stable = data.get("stable")
        if not (isinstance(stable, int) and not isinstance(stable, bool) and stable > 0):
            raise RepositoryError(f"{LABELS_FILE}: stable must be a positive integer: {stable!r}")
        history = data.get("history", [])
        if not (
            isinstance(history, list)
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in history)
        ):
            raise RepositoryError(f"{LABELS_FILE}: history must be a list of versions")
        loaded = data.get("loaded", True)
        if not isinstance(loaded, bool):
            raise RepositoryError(f"{LABELS_FILE}: loaded must be true or false")
        return cls(
            stable=stable,
            trial=_trial_from_json(data.get("trial")),
            history=tuple(history),
            loaded=loaded,
        )


def _trial_from_json(raw: object) -> Trial | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RepositoryError(f"{LABELS_FILE}: trial must be an object or null")
    mode = raw.get("mode")
    version = raw.get("version")
    if not (isinstance(version, int) and not isinstance(version, bool)):
        raise RepositoryError(f"{LABELS_FILE}: trial version must be an integer")
    key = "percent" if mode == "canary" else "sample"
    value = raw.get(key)
    if not (isinstance(value, int | float) and not isinstance(value, bool)):
        raise RepositoryError(f"{LABELS_FILE}: a {mode} trial needs a number {key!r}")
    share = float(value) / 100.0 if mode == "canary" else float(value)
    return Trial(mode=mode, version=version, share=share)  # type: ignore[arg-type]


_SPECIFIC_POLICY = re.compile(
    r"version_policy\s*:?\s*\{\s*specific\s*:?\s*\{\s*versions\s*:\s*\[([^\]]*)\]"
)


def policy_versions(config_text: str) -> tuple[int, ...]:
    """The versions of a ``specific`` version_policy in config.pbtxt; () for latest or all."""
    match = _SPECIFIC_POLICY.search(config_text)
    if match is None:
        return ()
    try:
        return tuple(sorted({int(v) for v in match[1].replace(",", " ").split()}))
    except ValueError as exc:
        raise RepositoryError(f"{TRITON_CONFIG_FILE}: bad version_policy: {exc}") from exc


def version_number(name: str) -> int | None:
    """The version a folder name stands for (ASCII digits only, as Triton reads them), or None.

    ``str.isdigit`` alone also accepts digits such as "²" that ``int`` refuses.
    """
    return int(name) if name.isascii() and name.isdigit() else None


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
            number = version_number(entry.name)
            if number is None or number == 0 or not entry.is_dir():
                continue
            version = ModelVersion(number, entry)
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

    # -- what serves --------------------------------------------------------------------------

    @property
    def labels_path(self) -> Path:
        return self.model_dir / LABELS_FILE

    @property
    def config_path(self) -> Path:
        return self.model_dir / TRITON_CONFIG_FILE

    def read_state(self) -> ServingState:
        """labels.json, or the config's version policy when there is none.

        RepositoryUnavailable when the model folder cannot be listed, RepositoryError when
        labels.json is unreadable or malformed.
        """
        if not os.access(self.model_dir, os.R_OK | os.X_OK) or not self.model_dir.is_dir():
            raise RepositoryUnavailable(f"cannot read the model folder {self.model_dir}")
        # a file that is not UTF-8 (a hand edit saved as Latin-1) is as unreadable as a missing
        # permission: the worker stays up, not ready, saying why (UnicodeDecodeError is a
        # ValueError)
        try:
            text = self.labels_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            try:
                config = self.config_path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return ServingState()
            except (OSError, ValueError) as exc:
                raise RepositoryError(f"unreadable {TRITON_CONFIG_FILE}: {exc}") from exc
            return ServingState(policy_versions=policy_versions(config))
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"unreadable {LABELS_FILE}: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RepositoryError(f"{LABELS_FILE} is not JSON: {exc}") from exc
        except RecursionError:  # a hostile file: arrays or objects nested thousands deep
            raise RepositoryError(
                f"{LABELS_FILE} is unreadable: JSON nested too deeply to read"
            ) from None
        return ServingState.from_json(data)

    def snapshot(self) -> tuple[ServingState, dict[int, ModelVersion]]:
        """The serving state and the complete versions, read together for one reconciliation."""
        state = self.read_state()
        try:
            versions = {v.version: v for v in self.versions()}
        except OSError as exc:
            raise RepositoryUnavailable(f"cannot list {self.model_dir}: {exc}") from exc
        return state, versions

    def _write_state(self, state: ServingState) -> None:
        # Triton's view first (the loaded set), then ours in one replace: a reader of labels.json
        # never sees a label for a version that is not in the policy for long
        text = triton_config(self.name, versions=state.versions() or None)
        try:
            same = self.config_path.read_bytes() == text.encode()
        except FileNotFoundError:
            same = False
        if not same:  # missing, different, or not even UTF-8: written whole
            write_atomically(self.config_path, text.encode())
        if state.stable is not None:
            body = json.dumps(state.to_json(), indent=2) + "\n"
            write_atomically(self.labels_path, body.encode())

    @contextlib.contextmanager
    def changing_state(self) -> Iterator[_StateChange]:
        """Read, change and write the state under the repository lock (no lost updates).

        ``with repo.changing_state() as change: change.state = replace(change.state, ...)``; the
        new state is written atomically when the block ends without an exception.
        """
        with self._publish_lock():
            change = _StateChange(self.read_state())
            yield change
            if change.state != change.original:
                self._write_state(change.state)

    def delete_version(self, version: int) -> None:
        """Remove a version folder (never a labelled one): renamed away first, then deleted."""
        with self._publish_lock():
            state = self.read_state()
            if version in state.versions():
                raise RepositoryError(
                    f"version {version} is {state.label_of(version)}; it cannot be deleted"
                )
            target = self.get(version).path
            doomed = self.model_dir / f"{DELETING_PREFIX}{version}-{uuid.uuid4().hex}"
            os.replace(target, doomed)  # readers see the version gone at once
            _fsync_path(self.model_dir)
            shutil.rmtree(doomed, ignore_errors=True)

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
        # every name taken counts, not only folders: a stray file or a dangling symlink named
        # like the next version would make the rename of the staged folder fail
        numbers = [
            number
            for entry in self.model_dir.iterdir()
            if (number := version_number(entry.name)) is not None
        ]
        return max(numbers, default=0) + 1

    def _clean_stale_staging(self) -> None:
        # under the lock no publish is in flight, so any staging folder is a crash's leftover
        for prefix in (STAGING_PREFIX, DELETING_PREFIX):
            for entry in self.model_dir.glob(f"{prefix}*"):
                shutil.rmtree(entry, ignore_errors=True)

    def publish(
        self,
        onnx_bytes: bytes,
        card: Mapping[str, Any],
        extra_files: Mapping[str, bytes] | None = None,
    ) -> ModelVersion:
        """Write a new version atomically and return it: a candidate, served by nobody.

        The card gets ``name``, ``version``, ``sha256`` and ``size`` filled in here. ``extra_files``
        (relative paths, e.g. the report) are written into the same version folder. A repository
        without labels.json gets one: the first version published becomes ``stable``; in a
        repository that had versions but no labels, the highest earlier version does, so a new
        version never goes live by being published.
        """
        with self._publish_lock():
            self._clean_stale_staging()
            state = self.read_state()
            earlier = self.latest()
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
            if not state.pinned:
                policy = state.policy_versions
                stable = max(policy) if policy else (earlier.version if earlier else number)
                state = ServingState(stable=stable)
            self._write_state(state)
        return ModelVersion(number, final)


@dataclass
class _StateChange:
    """The state read under the lock (``original``) and the one to write (``state``)."""

    original: ServingState
    state: ServingState = field(init=False)

    def __post_init__(self) -> None:
        self.state = self.original
