"""Downloading a file safely: checksum-verified and written atomically.

The bytes go to a temporary file in the destination's directory while their MD5 is computed.
Only when the checksum matches is the file renamed (`os.replace`, atomic on one file system) to
its final name; on any failure the temporary file is deleted. So a file under the final name has
always been verified, even if the download was interrupted or the machine lost power.
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

DEFAULT_TIMEOUT = 30.0  # seconds without an answer before a download gives up
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
) -> Path:
    """Download `url` to `dest`, verifying its MD5 hex digest `md5`; returns `dest` as a Path.

    Raises `DownloadError` for network trouble (including no answer within `timeout` seconds)
    and `ChecksumError` when the content does not match; in both cases nothing is left behind.
    """
    dest = Path(dest)
    with atomic_write(dest) as out:  # a mismatch raises inside: nothing is left behind
        digest = _fetch(url, out, timeout, progress, label=dest.name)
        if digest != md5.lower():
            raise ChecksumError(
                f"{dest.name}: checksum mismatch: expected md5 {md5.lower()}, got {digest} "
                f"(downloaded from {url}); the file was discarded"
            )
    return dest


def _fetch(url: str, out: BinaryIO, timeout: float, progress: bool, label: str) -> str:
    """Copy the body of `url` into `out` under a tqdm bar; returns the MD5 hex digest."""
    hasher = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=size, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False
            ) as bar:
                while chunk := response.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
                    received += len(chunk)
            # read(n) just returns b"" when the server hangs up early: count the bytes ourselves
            if size is not None and received != size:
                raise DownloadError(
                    f"{url}: connection broken after {received:,} of {size:,} bytes"
                )
    except TimeoutError:
        raise DownloadError(f"{url}: no answer within {timeout:g} s") from None
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise DownloadError(f"{url}: no answer within {timeout:g} s") from None
        raise DownloadError(f"{url}: {err.reason}") from None
    except (http.client.HTTPException, ConnectionError) as err:
        raise DownloadError(f"{url}: connection broken ({err!r})") from None
    return hasher.hexdigest()
