"""Downloads and the order of data sources, all against servers on 127.0.0.1.

No test here touches the network or the real home directory: the mirrors point at a closed local
port, the cache at tmp_path, and the Debian location at an empty folder, unless a test says
otherwise.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import json
import re
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from tinynorm.data import (
    MNIST,
    ChecksumError,
    DataNotFoundError,
    DownloadError,
    FashionMNIST,
    IDXError,
    default_cache_dir,
    download,
)
from tinynorm.data.download import CONNECT_TIMEOUT

TRAIN = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def mnist_files(n: int, names=TRAIN) -> dict[str, bytes]:
    """A gzipped MNIST-shaped split of `n` blank images with labels 0, 1, ... (mod 10)."""
    images = b"\x00\x00\x08\x03" + np.array([n, 28, 28], ">u4").tobytes() + bytes(n * 784)
    labels = b"\x00\x00\x08\x01" + np.array([n], ">u4").tobytes() + bytes(i % 10 for i in range(n))
    return {names[0]: gzip.compress(images), names[1]: gzip.compress(labels)}


def put(directory, files: dict[str, bytes]):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


class LocalServer:
    """An HTTP server on 127.0.0.1 serving `files` (name -> bytes) from a thread.

    It answers one request at a time and stops by itself after `lifetime` seconds, or when the
    test ends; `requests` lists the paths asked for.
    """

    def __init__(self, files: dict[str, bytes], lifetime: float = 20.0):
        self.files = files
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 5  # seconds a client may take

            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 0.05  # handle_request() returns after this long without a request
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self._stop = threading.Event()
        deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._serve, args=(deadline,), daemon=True)
        self._thread.start()

    def _serve(self, deadline: float):
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.httpd.handle_request()
        self.httpd.server_close()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def serve():
    """serve(files) starts a LocalServer; all are stopped when the test ends."""
    servers = []
    yield lambda files: servers.append(LocalServer(files)) or servers[-1]
    for server in servers:
        server.stop()


@pytest.fixture
def closed_port() -> int:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_url():
    """A server that accepts the connection (the kernel's backlog does) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/"


@pytest.fixture
def blackhole_url():
    """A server whose queue of connections is full: the kernel drops further connection
    attempts, as a firewall that drops packets does, so connecting hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(0)
        with socket.create_connection(s.getsockname()):  # fills the queue
            yield f"http://127.0.0.1:{s.getsockname()[1]}/"


def slow_url(body: bytes, pause: float) -> str:
    """A one-request server that sends the headers and half of `body` at once, then the rest
    after `pause` seconds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer():
        with listener, listener.accept()[0] as conn:
            conn.recv(4096)
            conn.sendall(f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            conn.sendall(body[: len(body) // 2])
            time.sleep(pause)
            with contextlib.suppress(OSError):  # the client may have given up
                conn.sendall(body[len(body) // 2 :])

    threading.Thread(target=answer, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/f.gz"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, closed_port):
    """No network, no real cache, no environment variable, no Debian copy."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TINYNORM_DATA", raising=False)
    monkeypatch.delenv("TINYNORM_OFFLINE", raising=False)
    dead = (f"http://127.0.0.1:{closed_port}/",)
    monkeypatch.setattr(MNIST, "mirrors", dead)
    monkeypatch.setattr(FashionMNIST, "mirrors", dead)
    monkeypatch.setattr(FashionMNIST, "system_dir", tmp_path / "no-debian")


# ---- download() -------------------------------------------------------------------------------
GOOD, BAD = b"the real content" * 1000, b"the real content" * 999 + b"something else!!"


def test_download_verified_file_lands_under_its_name(tmp_path, serve):
    server = serve({"file.gz": GOOD})
    for progress in (True, False):
        dest = download(
            server.url + "file.gz", tmp_path / "out" / "file.gz", md5(GOOD), 5, progress
        )
        assert dest.read_bytes() == GOOD
        assert [p.name for p in dest.parent.iterdir()] == ["file.gz"]  # no temporary file left


def test_download_checksum_mismatch_leaves_nothing(tmp_path, serve):
    server = serve({"file.gz": BAD})
    message = f"file.gz: checksum mismatch: expected md5 {md5(GOOD)}, got {md5(BAD)}"
    with pytest.raises(ChecksumError, match=re.escape(message)):
        download(server.url + "file.gz", tmp_path / "file.gz", md5(GOOD), timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_download_timeout(tmp_path, silent_url):
    began = time.monotonic()
    with pytest.raises(DownloadError, match=re.escape(f"{silent_url}f.gz: no answer within 0.3 s")):
        download(silent_url + "f.gz", tmp_path / "f.gz", md5(GOOD), timeout=0.3)
    assert time.monotonic() - began < 5
    assert list(tmp_path.iterdir()) == []


def test_download_connect_timeout(tmp_path, blackhole_url):
    """Connecting gets `connect_timeout`, not the (longer) `timeout` of a started download."""
    began = time.monotonic()
    message = f"{blackhole_url}f.gz: no answer within 0.3 s"
    with pytest.raises(DownloadError, match=re.escape(message)):
        download(blackhole_url + "f.gz", tmp_path / "f.gz", md5(GOOD), connect_timeout=0.3)
    assert time.monotonic() - began < 5
    assert list(tmp_path.iterdir()) == []


def test_download_read_timeout_once_the_body_flows(tmp_path):
    """A pause in the body longer than `connect_timeout` is fine; one longer than `timeout`
    is not."""
    url = slow_url(GOOD, pause=1.0)
    dest = download(url, tmp_path / "f.gz", md5(GOOD), timeout=10, connect_timeout=0.3)
    assert dest.read_bytes() == GOOD
    url = slow_url(GOOD, pause=2.0)
    message = f"{url}: no data for 0.5 s after {len(GOOD) // 2:,} bytes"
    with pytest.raises(DownloadError, match=re.escape(message)):
        download(url, tmp_path / "g.gz", md5(GOOD), timeout=0.5, connect_timeout=0.3)
    assert list(tmp_path.iterdir()) == [dest]


def test_download_network_errors(tmp_path, serve, closed_port):
    server = serve({})
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url + "missing.gz", tmp_path / "missing.gz", md5(GOOD), timeout=5)
    with pytest.raises(DownloadError, match="Connection refused"):
        download(f"http://127.0.0.1:{closed_port}/f.gz", tmp_path / "f.gz", md5(GOOD), timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_download_broken_off_leaves_nothing(tmp_path):
    """The server promises more bytes than it sends, then hangs up."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer():
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + GOOD[:500])

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/f.gz"
        with pytest.raises(DownloadError, match="connection broken"):
            download(url, tmp_path / "f.gz", md5(GOOD), timeout=5)
        thread.join(timeout=5)
    assert list(tmp_path.iterdir()) == []


# ---- the order of sources ---------------------------------------------------------------------
@pytest.fixture
def sources(tmp_path, serve, monkeypatch, closed_port):
    """Every MNIST source at once, each with a different number of images to tell them apart:
    root 3, $TINYNORM_DATA 4, cache 5, download 6 (bundled mnist-lite: 10,000)."""
    root, env = put(tmp_path / "root", mnist_files(3)), put(tmp_path / "env", mnist_files(4))
    cache = put(tmp_path / "xdg" / "tinynorm" / "mnist", mnist_files(5))
    server = serve(mnist_files(6))
    monkeypatch.setattr(MNIST, "md5", {n: md5(b) for n, b in mnist_files(6).items()})
    monkeypatch.setattr(MNIST, "mirrors", (f"http://127.0.0.1:{closed_port}/", server.url))
    monkeypatch.setenv("TINYNORM_DATA", str(env))
    return root, env, cache, server


def test_order_root_first(sources, capsys):
    root, *_ = sources
    data = MNIST(root=root)
    assert (data.source.kind, len(data)) == ("root", 3)
    assert capsys.readouterr().out == (
        f"data: MNIST train (3 images) from {root} (the directory given as root / --data-dir)\n"
    )


def test_order_env_var_second(sources, capsys):
    data = MNIST()
    assert (data.source.kind, len(data)) == ("env", 4)
    assert "(named by $TINYNORM_DATA)" in capsys.readouterr().out


def test_order_cache_third(sources, monkeypatch, capsys):
    monkeypatch.delenv("TINYNORM_DATA")
    *_, cache, server = sources
    data = MNIST()
    assert (data.source.kind, data.source.directory, len(data)) == ("cache", cache, 5)
    assert server.requests == []
    assert capsys.readouterr().out.endswith(f"from {cache} (user cache)\n")


def test_order_download_fourth(sources, monkeypatch, capsys):
    monkeypatch.delenv("TINYNORM_DATA")
    *_, cache, server = sources
    for name in TRAIN:
        (cache / name).unlink()
    (cache / TEST[0]).write_bytes(b"unrelated")  # the other split is not touched
    data = MNIST()
    assert (data.source.kind, len(data)) == ("download", 6)
    assert server.requests == ["/" + name for name in TRAIN]  # after the dead first mirror
    assert sorted(p.name for p in cache.iterdir()) == sorted([*TRAIN, TEST[0]])
    assert f"downloaded from {server.url}, md5 verified" in capsys.readouterr().out
    assert MNIST().source.kind == "cache"  # and next time from the cache


def test_download_fetches_only_missing_files(sources, monkeypatch):
    monkeypatch.delenv("TINYNORM_DATA")
    *_, cache, server = sources
    (cache / TRAIN[1]).unlink()
    (cache / TRAIN[0]).write_bytes(mnist_files(6)[TRAIN[0]])
    assert len(MNIST()) == 6
    assert server.requests == ["/" + TRAIN[1]]


def test_bundled_last_when_download_fails(tmp_path, closed_port, capsys):
    data = MNIST()
    assert (data.source.kind, len(data)) == ("bundled", 10_000)
    line = capsys.readouterr().out
    assert line.startswith("data: MNIST train (10,000 images) from ")
    assert (
        "(bundled mnist-lite: 10,000 training digits; the full set could not be downloaded: "
        in line
    )
    assert f"http://127.0.0.1:{closed_port}/train-images-idx3-ubyte.gz: " in line
    assert "Connection refused" in line and line.count("\n") == 1
    marker = tmp_path / "xdg" / "tinynorm" / "mnist" / "download-failed.json"
    assert line.endswith(f"; no new try for 24 h unless you remove {marker})\n")
    assert list(marker.parent.iterdir()) == [marker]  # no data file


def test_bundled_when_the_download_is_corrupt(tmp_path, serve, monkeypatch, capsys):
    server = serve(mnist_files(6))
    monkeypatch.setattr(MNIST, "mirrors", (server.url,))  # real md5 sums: a mismatch
    data = MNIST()
    assert data.source.kind == "bundled"
    out = capsys.readouterr().out
    assert "train-images-idx3-ubyte.gz: checksum mismatch: expected md5 f68b3c2d" in out
    cache = tmp_path / "xdg" / "tinynorm" / "mnist"
    assert list(cache.iterdir()) == [cache / "download-failed.json"]  # no data file


def test_bundled_when_the_cache_cannot_be_written(tmp_path, serve, monkeypatch, capsys):
    server = serve(mnist_files(6))
    monkeypatch.setattr(MNIST, "mirrors", (server.url,))
    monkeypatch.setattr(MNIST, "md5", {n: md5(b) for n, b in mnist_files(6).items()})
    (tmp_path / "a-file").write_bytes(b"")
    assert MNIST(cache_dir=tmp_path / "a-file").source.kind == "bundled"
    out = capsys.readouterr().out
    assert "Not a directory" in out and "no new try" not in out  # nothing could be remembered


def test_download_false_skips_the_network(serve, monkeypatch, capsys):
    server = serve(mnist_files(6))
    monkeypatch.setattr(MNIST, "mirrors", (server.url,))
    assert MNIST(download=False).source.kind == "bundled"
    assert server.requests == []
    out = capsys.readouterr().out
    assert "(download=False, as with --offline), so the full set was not downloaded" in out


# ---- offline, and remembering a failed download ----------------------------------------------
@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """The addresses the data sets ask to download, in order (the download itself still runs)."""
    urls = []

    def spy(url, *args, **kwargs):
        urls.append(url)
        return download(url, *args, **kwargs)

    monkeypatch.setattr("tinynorm.data.datasets.download", spy)
    return urls


def marker_path(tmp_path):
    return tmp_path / "xdg" / "tinynorm" / "mnist" / "download-failed.json"


def record_failure(marker, hours_ago: float = 0.0, reason: str = "it failed"):
    """A failure record as the data sets write it, for a failure `hours_ago` hours ago."""
    failed_at = datetime.now(timezone.utc) - timedelta(hours=hours_ago)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"failed_at": failed_at.isoformat(), "reason": reason}))


UTC_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"


def test_a_mirror_that_never_answers_costs_one_short_timeout(silent_url, monkeypatch, capsys):
    """The main job's two data sets, with a mirror that takes the connection and then says
    nothing: the default connect timeout, once, as the test set does not try again."""
    monkeypatch.setattr(MNIST, "mirrors", (silent_url,))
    began = time.monotonic()
    assert MNIST().source.kind == MNIST(train=False).source.kind == "bundled"
    assert time.monotonic() - began < CONNECT_TIMEOUT + 10  # was 30 s per data set
    train, test = capsys.readouterr().out.splitlines()
    assert f"train-images-idx3-ubyte.gz: no answer within {CONNECT_TIMEOUT:g} s" in train
    assert "the full set could not be downloaded (tried " in test


def test_a_failed_download_is_remembered(tmp_path, closed_port, downloads, capsys):
    MNIST()
    marker = marker_path(tmp_path)
    reason = f"http://127.0.0.1:{closed_port}/train-images-idx3-ubyte.gz: [Errno 111] Connection"
    assert json.loads(marker.read_text())["reason"].startswith(reason)
    assert len(downloads) == 1
    capsys.readouterr()
    for train in (True, False):
        assert MNIST(train=train).source.kind == "bundled"
        expected = (
            rf"; the full set could not be downloaded \(tried {UTC_TIME}: {re.escape(reason)}.*\); "
            rf"no new try before {UTC_TIME} unless you remove {re.escape(str(marker))}\)$"
        )
        assert re.search(expected, capsys.readouterr().out)
    assert len(downloads) == 1  # neither tried the network again


def test_a_remembered_failure_expires_after_a_day(tmp_path, serve, monkeypatch, downloads):
    server = serve(mnist_files(6))
    monkeypatch.setattr(MNIST, "mirrors", (server.url,))
    monkeypatch.setattr(MNIST, "md5", {n: md5(b) for n, b in mnist_files(6).items()})
    marker = marker_path(tmp_path)
    record_failure(marker, hours_ago=23)
    assert MNIST(verbose=False).source.kind == "bundled"
    assert downloads == []
    record_failure(marker, hours_ago=25)
    assert MNIST(verbose=False).source.kind == "download"
    assert downloads == [server.url + name for name in TRAIN]
    assert not marker.exists()  # a download that worked clears it


def test_finding_the_full_set_in_the_cache_clears_the_failure(tmp_path, downloads):
    marker = marker_path(tmp_path)
    put(marker.parent, mnist_files(5))
    record_failure(marker)
    assert MNIST(verbose=False).source.kind == "cache"
    assert marker.exists()  # the test set is still missing: its download is not to be tried
    assert MNIST(train=False, verbose=False).source.kind == "bundled"
    put(marker.parent, mnist_files(5, TEST))
    assert MNIST(verbose=False).source.kind == "cache"
    assert not marker.exists()
    assert downloads == []


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"\xff\xfe", b"[1, 2]", b"null", b'{"reason": "x"}',
     b'{"failed_at": 5, "reason": "x"}', b'{"failed_at": "yesterday", "reason": "x"}',
     b'{"failed_at": "2999-01-01T00:00:00+00:00", "reason": "x"}', b'{"failed_at": "NOW"}',
     b'{"failed_at": "NOW", "reason": ["x"]}'],
    ids=["empty", "not-json", "not-utf8", "list", "null", "no-time", "number-time", "bad-time",
         "future", "no-reason", "list-reason"],
)  # fmt: skip
def test_a_corrupt_failure_record_is_ignored(tmp_path, content, downloads, capsys):
    marker = marker_path(tmp_path)
    marker.parent.mkdir(parents=True)
    marker.write_bytes(content.replace(b"NOW", datetime.now(timezone.utc).isoformat().encode()))
    assert MNIST().source.kind == "bundled"
    assert len(downloads) == 1  # tried
    assert "; the full set could not be downloaded: http://" in capsys.readouterr().out
    assert "Connection refused" in json.loads(marker.read_text())["reason"]  # and remembered


def test_tinynorm_offline_skips_the_network(tmp_path, monkeypatch, downloads, capsys):
    monkeypatch.setenv("TINYNORM_OFFLINE", "1")
    assert MNIST().source.kind == "bundled"
    out = capsys.readouterr().out
    assert "; offline ($TINYNORM_OFFLINE=1), so the full set was not downloaded)" in out
    with pytest.raises(DataNotFoundError, match=re.escape("offline ($TINYNORM_OFFLINE=1)")):
        FashionMNIST()
    assert not (tmp_path / "xdg").exists()  # nothing remembered: nothing failed
    put(marker_path(tmp_path).parent, mnist_files(5))
    assert MNIST().source.kind == "cache"  # the cache is not the network
    assert downloads == []
    monkeypatch.setenv("TINYNORM_OFFLINE", "0")
    MNIST(train=False)
    assert len(downloads) == 1


def test_a_named_directory_must_hold_the_files(tmp_path, monkeypatch):
    put(tmp_path / "half", dict(list(mnist_files(3).items())[:1]))
    with pytest.raises(DataNotFoundError, match=re.escape("has no train-labels-idx1-ubyte.gz")):
        MNIST(root=tmp_path / "half")
    with pytest.raises(DataNotFoundError, match=r"nowhere \(.*\) is not a directory"):
        MNIST(root=tmp_path / "nowhere")
    monkeypatch.setenv("TINYNORM_DATA", str(tmp_path / "half"))
    with pytest.raises(DataNotFoundError, match=re.escape("(named by $TINYNORM_DATA) has no")):
        MNIST()


def test_default_cache_dir(tmp_path, monkeypatch):
    assert default_cache_dir() == tmp_path / "xdg" / "tinynorm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "tinynorm"


# ---- Fashion-MNIST: the Debian location, no bundled copy --------------------------------------
def test_fashion_mnist_from_the_debian_location(tmp_path, monkeypatch, capsys):
    debian = put(tmp_path / "debian", mnist_files(7, TEST))
    monkeypatch.setattr(FashionMNIST, "system_dir", debian)
    monkeypatch.setattr(FashionMNIST, "full_sizes", {True: 60_000, False: 7})
    data = FashionMNIST(train=False)
    assert (data.source.kind, len(data)) == ("system", 7)
    assert data.normalized().shape == (7, 1, 28, 28)
    out = capsys.readouterr().out
    assert f"from {debian} (Debian package dataset-fashion-mnist; the full set could not" in out
    monkeypatch.setattr(FashionMNIST, "full_sizes", {True: 60_000, False: 10_000})
    with pytest.raises(IDXError, match="7 images, expected the full set's 10,000"):
        FashionMNIST(train=False)


def test_fashion_mnist_not_found(tmp_path):
    message = r"Fashion-MNIST: no data found: .*nothing in .*no-debian \(Debian package"
    with pytest.raises(DataNotFoundError, match=message):
        FashionMNIST(download=False)
