"""Downloading a file safely: checksum-verified and written atomically.

The bytes go to a temporary file in the destination's directory while their MD5 is computed.
Only when the checksum matches is the file renamed (`os.replace`, atomic on one file system) to
its final name; on any failure the temporary file is deleted. So a file under the final name has
always been verified, even if the download was interrupted or the machine lost power.

A server that cannot be reached costs only `connect_timeout` seconds: that is all it gets to
accept the connection and send the response's headers. Once the body flows, each read may wait
the longer `timeout`. urllib does the rest, so proxies ($https_proxy) and redirects work as usual.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from os import PathLike
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from ..files import atomic_write

CONNECT_TIMEOUT = 5.0  # seconds to connect and get the response's headers
DEFAULT_TIMEOUT = 30.0  # seconds a started download may go without data before it gives up
CHUNK = 1 << 16


class DownloadError(OSError):
    """The server could not be reached, did not answer in time, or broke off."""


class ChecksumError(ValueError):
    """A downloaded file's checksum is not the published one; the file was discarded."""


def download(
    url: str,
    dest: str | PathLike[str],
    md5: str,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> Path:
    """Download `url` to `dest`, verifying its MD5 hex digest `md5`; returns `dest` as a Path.

    Raises `DownloadError` for network trouble (no connection and answer within
    `connect_timeout` seconds, or no data for `timeout` seconds once the body flows) and
    `ChecksumError` when the content does not match; in both cases nothing is left behind.
    """
    dest = Path(dest)
    with atomic_write(dest) as out:  # a mismatch raises inside: nothing is left behind
        digest = _fetch(url, out, timeout, min(connect_timeout, timeout), progress, dest.name)
        if digest != md5.lower():
            raise ChecksumError(
                f"{dest.name}: checksum mismatch: expected md5 {md5.lower()}, got {digest} "
                f"(downloaded from {url}); the file was discarded"
            )
    return dest


def _fetch(
    url: str, out: BinaryIO, timeout: float, connect_timeout: float, progress: bool, label: str
) -> str:
    """Copy the body of `url` into `out` under a tqdm bar; returns the MD5 hex digest."""
    hasher = hashlib.md5(usedforsecurity=False)
    received = 0
    response = None
    opener = urllib.request.build_opener(_Handler(connect_timeout))
    try:
        with opener.open(url, timeout=timeout) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=size, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False
            ) as bar:
                while chunk := response.read1(CHUNK):  # what has come, up to CHUNK
                    hasher.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
                    received += len(chunk)
            # read1() just returns b"" when the server hangs up early: count the bytes ourselves
            if size is not None and received != size:
                raise DownloadError(
                    f"{url}: connection broken after {received:,} of {size:,} bytes"
                )
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (TimeoutError, urllib.error.URLError) as err:  # urllib wraps errors in connecting
        if not isinstance(getattr(err, "reason", err), TimeoutError):
            raise DownloadError(f"{url}: {err.reason}") from None
        if response is None:
            raise DownloadError(f"{url}: no answer within {connect_timeout:g} s") from None
        raise DownloadError(f"{url}: no data for {timeout:g} s after {received:,} bytes") from None
    except (http.client.HTTPException, ConnectionError) as err:
        raise DownloadError(f"{url}: connection broken ({err!r})") from None
    return hasher.hexdigest()


class _Connection:
    """Mixed into http.client's connections: `connect_timeout` seconds to connect (proxy tunnel
    and TLS handshake included) and to receive the response's headers, then `timeout` seconds
    for each read of the body."""

    def __init__(self, *args, connect_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        read_timeout, self.timeout = self.timeout, self.connect_timeout
        try:
            super().connect()
        finally:
            self.timeout = read_timeout

    def getresponse(self) -> http.client.HTTPResponse:
        sock = self.sock  # getresponse() drops it when the server will close the connection
        response = super().getresponse()
        sock.settimeout(self.timeout)  # the headers are in: from now on, the read timeout
        return response


class _HTTPConnection(_Connection, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Connection, http.client.HTTPSConnection):
    pass


class _Handler(urllib.request.HTTPSHandler, urllib.request.HTTPHandler):
    """urllib's handler of http and https addresses, opening `_Connection`s."""

    def __init__(self, connect_timeout: float):
        super().__init__()
        self.connect_timeout = connect_timeout

    def do_open(self, http_class, req, **kwargs):
        secure = issubclass(http_class, http.client.HTTPSConnection)
        connection = _HTTPSConnection if secure else _HTTPConnection
        return super().do_open(connection, req, connect_timeout=self.connect_timeout, **kwargs)
