"""The MNIST loader: local folders, the download cache against a local HTTP mirror, bad files."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import shutil
import socket
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.data import MNIST_FILES, DataError, Split, load_mnist, scale_pixels

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP mirror on 127.0.0.1 serving a folder (empty at first); yields (url, folder)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> Iterator[str]:
    """A loopback URL that refuses connections: its port stays bound (never listening) for the
    whole test, so that no other process can start listening there meanwhile."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{probe.getsockname()[1]}/"


def _copy_mnist(source: Path, target: Path) -> None:
    for name in MNIST_FILES:
        shutil.copyfile(source / name, target / name)


def test_loads_the_four_files_with_shapes_dtypes_and_checksums(mnist_data: Any) -> None:
    assert mnist_data.train.images.shape == (60000, 784)
    assert mnist_data.test.images.shape == (10000, 784)
    assert mnist_data.train.images.dtype == np.uint8
    assert mnist_data.train.labels.dtype == np.int64
    assert set(np.unique(mnist_data.test.labels)) == set(range(10))
    assert mnist_data.train.images.max() == 255
    assert mnist_data.checksums == MNIST_FILES


def test_scale_pixels_maps_raw_0_255_to_0_1_as_float32() -> None:
    raw = np.array([[0, 51, 255] + [0] * 781], dtype=np.uint8)
    scaled = scale_pixels(raw)
    assert scaled.dtype == np.float32
    assert scaled[0, :3].tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_split_head_and_shape_checks() -> None:
    split = Split(np.zeros((5, 784), np.uint8), np.arange(5, dtype=np.int64))
    assert len(split.head(3)) == 3
    assert split.head(None) is split
    with pytest.raises(ValueError, match="labels"):
        Split(np.zeros((5, 784), np.uint8), np.arange(4, dtype=np.int64))


def test_missing_file_names_it_and_how_to_provide_it(tmp_path: Path, mnist_data_dir: Any) -> None:
    _copy_mnist(mnist_data_dir, tmp_path)
    (tmp_path / TRAIN_IMAGES).unlink()
    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path, log=io.StringIO())
    message = str(caught.value)
    assert TRAIN_IMAGES in message
    assert "--data-dir" in message and "MNIST_DATA_DIR" in message


def test_corrupt_file_in_a_data_dir_is_refused_with_its_md5(
    tmp_path: Path, mnist_data_dir: Any
) -> None:
    _copy_mnist(mnist_data_dir, tmp_path)
    labels = "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress((tmp_path / labels).read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one changed label: still valid IDX, wrong MD5
    (tmp_path / labels).write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=f"{labels} is corrupt.*expected {MNIST_FILES[labels]}"):
        load_mnist(tmp_path, log=io.StringIO())


def test_not_gzip_is_a_clear_error(tmp_path: Path, mnist_data_dir: Any) -> None:
    _copy_mnist(mnist_data_dir, tmp_path)
    (tmp_path / TRAIN_IMAGES).write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match=f"{TRAIN_IMAGES} is not a valid gzip file"):
        load_mnist(tmp_path, log=io.StringIO())


def test_environment_variable_names_the_folder(mnist_data_dir: Any) -> None:
    data = load_mnist(environ={"MNIST_DATA_DIR": str(mnist_data_dir)}, log=io.StringIO())
    assert len(data.test) == 10000


def test_downloads_into_the_cache_then_reads_the_cache_offline(
    tmp_path: Path, mirror: Any, mnist_data_dir: Any, closed_port_url: str
) -> None:
    url, folder = mirror
    _copy_mnist(mnist_data_dir, folder)
    cache = tmp_path / "cache"
    environ = {"MNIST_CACHE_DIR": str(cache), "MNIST_MIRRORS": url}
    log = io.StringIO()
    data = load_mnist(environ=environ, log=log)
    assert len(data.train) == 60000
    assert sorted(p.name for p in cache.iterdir()) == sorted(MNIST_FILES)
    assert log.getvalue().count("downloading") == 4
    # offline now: the mirror is gone, the cache answers
    again = load_mnist(
        environ={"MNIST_CACHE_DIR": str(cache), "MNIST_MIRRORS": closed_port_url},
        log=io.StringIO(),
    )
    assert np.array_equal(again.test.labels, data.test.labels)


def test_an_unreachable_mirror_falls_through_to_the_next(
    tmp_path: Path, mirror: Any, mnist_data_dir: Any, closed_port_url: str
) -> None:
    url, folder = mirror
    _copy_mnist(mnist_data_dir, folder)
    environ = {
        "MNIST_CACHE_DIR": str(tmp_path / "cache"),
        "MNIST_MIRRORS": f"{closed_port_url},{url}",
    }
    data = load_mnist(environ=environ, log=io.StringIO())
    assert len(data.test) == 10000


def test_a_corrupt_download_is_not_cached_and_the_error_names_the_file(
    tmp_path: Path, mirror: Any, mnist_data_dir: Any
) -> None:
    url, folder = mirror
    _copy_mnist(mnist_data_dir, folder)
    (folder / TEST_LABELS).write_bytes(gzip.compress(b"\x00" * 1000))
    cache = tmp_path / "cache"
    environ = {"MNIST_CACHE_DIR": str(cache), "MNIST_MIRRORS": url}
    with pytest.raises(DataError) as caught:
        load_mnist(environ=environ, log=io.StringIO())
    assert TEST_LABELS in str(caught.value)
    assert "MD5" in str(caught.value)
    assert (cache / TRAIN_IMAGES).exists()  # the good files before it are cached
    assert not (cache / TEST_LABELS).exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_no_mirror_reachable_says_how_to_provide_the_files(
    tmp_path: Path, closed_port_url: str
) -> None:
    environ = {"MNIST_CACHE_DIR": str(tmp_path / "cache"), "MNIST_MIRRORS": closed_port_url}
    with pytest.raises(DataError) as caught:
        load_mnist(environ=environ, log=io.StringIO())
    message = str(caught.value)
    assert "cannot download" in message
    assert "--data-dir" in message and "MNIST_DATA_DIR" in message


def test_a_corrupt_cached_file_is_downloaded_again(
    tmp_path: Path, mirror: Any, mnist_data_dir: Any
) -> None:
    url, folder = mirror
    _copy_mnist(mnist_data_dir, folder)
    cache = tmp_path / "cache"
    cache.mkdir()
    _copy_mnist(mnist_data_dir, cache)
    (cache / TRAIN_IMAGES).write_bytes(gzip.compress(b"broken"))
    log = io.StringIO()
    data = load_mnist(environ={"MNIST_CACHE_DIR": str(cache), "MNIST_MIRRORS": url}, log=log)
    assert len(data.train) == 60000
    assert "corrupt" in log.getvalue()
    assert log.getvalue().count("downloading http") == 1


#: ways a gzip file breaks with its first bytes intact, and what Python's gzip raises for each
GZIP_DAMAGE: dict[str, type[BaseException]] = {
    "compressed data": zlib.error,
    "truncated": EOFError,
    "header": gzip.BadGzipFile,
}


def damage_gzip(path: Path, kind: str) -> None:
    """Damage the gzip file at ``path`` in the way ``kind`` of GZIP_DAMAGE names."""
    data = bytearray(path.read_bytes())
    if kind == "compressed data":
        data[30] ^= 0xFF  # past the 10-byte header and the file name
    elif kind == "truncated":
        data = data[: len(data) // 2]
    else:
        data[2] = 9  # compression method 9: no such method
    path.write_bytes(bytes(data))
    with pytest.raises(GZIP_DAMAGE[kind]):  # the damage is the kind the test is about
        gzip.decompress(bytes(data))


@pytest.mark.parametrize("kind", list(GZIP_DAMAGE))
def test_a_damaged_gzip_file_in_a_data_dir_is_a_data_error_naming_it(
    kind: str, tmp_path: Path, mnist_data_dir: Any
) -> None:
    _copy_mnist(mnist_data_dir, tmp_path)
    damage_gzip(tmp_path / TEST_LABELS, kind)
    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path, log=io.StringIO())
    message = str(caught.value)
    assert message.startswith(f"MNIST file {tmp_path / TEST_LABELS} is not a valid gzip file (")
    assert "--data-dir" in message


@pytest.mark.parametrize("kind", list(GZIP_DAMAGE))
def test_a_damaged_gzip_file_in_the_cache_is_downloaded_again(
    kind: str, tmp_path: Path, mirror: Any, mnist_data_dir: Any
) -> None:
    url, folder = mirror
    _copy_mnist(mnist_data_dir, folder)
    cache = tmp_path / "cache"
    cache.mkdir()
    _copy_mnist(mnist_data_dir, cache)
    damage_gzip(cache / TEST_LABELS, kind)
    log = io.StringIO()
    data = load_mnist(environ={"MNIST_CACHE_DIR": str(cache), "MNIST_MIRRORS": url}, log=log)
    assert len(data.test) == 10000
    assert f"cached {cache / TEST_LABELS} is not a valid gzip file" in log.getvalue()
    assert log.getvalue().count("downloading http") == 1
    assert (cache / TEST_LABELS).read_bytes() == (mnist_data_dir / TEST_LABELS).read_bytes()
