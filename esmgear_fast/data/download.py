"""Fetching public data sets: a resumable, checksum-verified :func:`download_url`, and
:func:`missing_data_error` for loaders whose local data is absent.

Every dataset loader in :mod:`esmgear_fast.data.datasets` takes a local path first and never downloads on
its own; when the path is missing it raises :func:`missing_data_error`, which names the URL, the expected
layout under the path and what to do. Downloading is an explicit step::

    from esmgear_fast.data.download import download_url
    archive = download_url("https://zenodo.org/record/4915648/files/split-by-year.tar.gz", "data/psr",
                           md5="...")          # resumes a partial DEST.part; verifies; atomic rename

Only the standard library is used (``urllib``). Downloads resume with an HTTP ``Range`` request from an
existing ``<file>.part``; a server that ignores ``Range`` (status 200) makes the download start over. The
finished file is verified (md5 and/or sha256 when given) before it is renamed into place, so a file at the
final path is always complete; a checksum mismatch deletes the ``.part`` file and raises ``ValueError``.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = ["DATASET_URLS", "download_url", "extract_tar", "file_checksum", "missing_data_error"]

_CHUNK = 1 << 20

#: Archives of the downstream data sets with their published md5 (as ESM-GearNet downloads them). Extract
#: each into the folder you pass to the loader (``extract_tar`` or ``python -m esmgear_fast.data.download``).
DATASET_URLS = {
    "psr": ("https://zenodo.org/record/4915648/files/PSR-split-by-year.tar.gz", "8647b9d10d0a79dff81d1d83c825e74c"),
    "msp": ("https://zenodo.org/record/4962515/files/MSP-split-by-sequence-identity-30.tar.gz",
            "6628e8efac12648d3b78bb0fc0d8860c"),
}


def file_checksum(path: Union[str, os.PathLike], algorithm: str = "md5") -> str:
    """Hex digest of a file (``algorithm`` is any :func:`hashlib.new` name), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _filename_from_url(url: str) -> str:
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not name:
        raise ValueError(f"cannot derive a file name from URL {url!r}; pass filename=")
    return name


def _verify(path: Path, md5: Optional[str], sha256: Optional[str]) -> None:
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        actual = file_checksum(path, algorithm)
        if actual.lower() != expected.lower():
            raise ValueError(
                f"{path}: {algorithm} checksum mismatch: expected {expected.lower()}, got {actual}"
            )


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def download_url(
    url: str,
    dest_dir: Union[str, os.PathLike],
    md5: Optional[str] = None,
    sha256: Optional[str] = None,
    filename: Optional[str] = None,
    timeout: float = 60.0,
    retries: int = 3,
    quiet: bool = False,
) -> Path:
    """Download ``url`` into ``dest_dir`` and return the local path.

    * An existing complete file (passing the given checksums) is reused without a request.
    * Bytes go to ``<name>.part``; an interrupted download resumes from there with an HTTP ``Range`` request
      (up to ``retries`` attempts in one call, and again in a later call). If the server answers a range
      request with the whole file (200), the download starts over.
    * When done, the file is checked against ``md5`` / ``sha256`` (when given), fsynced and renamed into place
      atomically. A mismatch removes the ``.part`` file and raises ``ValueError`` naming both digests.
    * Progress (what is fetched, where to, bytes) is printed to stderr unless ``quiet``.

    Raises:
        ValueError: checksum mismatch, or a URL without a file name and no ``filename``.
        OSError / urllib.error.URLError: the server could not be reached or answered with an error after
            ``retries`` attempts (the message names the URL).
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / (filename or _filename_from_url(url))
    if dest.exists():
        try:
            _verify(dest, md5, sha256)
        except ValueError as exc:
            raise ValueError(
                f"{exc}; the existing file was not downloaded by this call - delete it to download again"
            ) from None
        _log(f"[download] {dest} already present, not downloading {url}", quiet)
        return dest
    part = dest.with_name(dest.name + ".part")
    _log(f"[download] fetching {url}\n[download]   -> {dest}", quiet)

    last_error: Optional[BaseException] = None
    for attempt in range(1, max(1, retries) + 1):
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "esmgear_fast"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = getattr(response, "status", 200)
                if offset and status == 206:
                    mode = "ab"
                    _log(f"[download]   resuming at byte {offset}", quiet)
                else:
                    if offset:
                        _log("[download]   server ignored the range request; starting over", quiet)
                    mode, offset = "wb", 0
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length is not None else None
                received, last_report = offset, time.monotonic()
                with open(part, mode) as handle:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        handle.write(chunk)
                        received += len(chunk)
                        now = time.monotonic()
                        if now - last_report > 5.0:
                            last_report = now
                            of = f" of {total}" if total else ""
                            _log(f"[download]   {received}{of} bytes", quiet)
                    handle.flush()
                    os.fsync(handle.fileno())
                if total is not None and received < total:
                    raise OSError(f"connection closed after {received} of {total} bytes")
            last_error = None
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # the .part file already holds the whole file (or more): verify it below
                last_error = None
                break
            last_error = exc
            if 400 <= exc.code < 500:
                break
        except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
            last_error = exc
        _log(f"[download]   attempt {attempt} failed: {last_error}", quiet)
    if last_error is not None:
        raise OSError(
            f"could not download {url} to {dest}: {last_error} (partial data kept in {part}; "
            f"calling download_url again resumes)"
        ) from last_error
    try:
        _verify(part, md5, sha256)
    except ValueError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    _fsync_dir(dest_dir)
    _log(f"[download]   done: {dest} ({dest.stat().st_size} bytes)", quiet)
    return dest


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def missing_data_error(
    what: str,
    path: Union[str, os.PathLike],
    url: Union[str, Sequence[str]],
    expected_layout: str,
) -> FileNotFoundError:
    """A ``FileNotFoundError`` (returned, for the caller to raise) for a data set that is not on disk.

    The message names the data set (``what``), the path that was looked at, where to download it from
    (one URL or several), the layout expected under the path, and a :func:`download_url` hint.
    """
    urls = [url] if isinstance(url, str) else list(url)
    layout = "\n".join("    " + line for line in expected_layout.strip("\n").splitlines())
    sources = "\n".join(f"    {u}" for u in urls)
    message = (
        f"{what} not found at {os.fspath(path)}.\n"
        f"  Download it from:\n{sources}\n"
        f"  and extract it so that the path looks like this:\n{layout}\n"
        f"  (e.g. esmgear_fast.data.download.download_url(URL, DEST_DIR), then unpack the archive into the path "
        f"above). Loaders never download on their own."
    )
    return FileNotFoundError(message)


def extract_tar(archive: Union[str, os.PathLike], dest_dir: Union[str, os.PathLike], quiet: bool = False) -> Path:
    """Extracts a (compressed) tar archive into ``dest_dir`` with the standard library's ``"data"`` filter
    (no absolute paths, no ``..``, no links leaving ``dest_dir``, no device files). Returns ``dest_dir``."""
    import tarfile

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    _log(f"[download] extracting {archive} into {dest_dir}", quiet)
    with tarfile.open(archive, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):      # Python >= 3.11.4 / 3.12
            tar.extractall(dest_dir, filter="data")
        else:                                    # older patch releases: the same rules, checked by hand
            tar.extractall(dest_dir, members=[_safe_member(m, dest_dir, archive) for m in tar.getmembers()])
    return dest_dir


def _safe_member(member, dest_dir: Path, archive) -> object:
    """``member`` if extracting it stays inside ``dest_dir`` (the ``"data"`` filter's rules), else
    ``tarfile.TarError`` (as the filter's own errors are)."""
    import tarfile

    root = dest_dir.resolve()

    def inside(name: str, base: Path) -> bool:
        target = (base / name).resolve()
        return target == root or root in target.parents

    problem = None
    if member.name.startswith(("/", "\\")) or not inside(member.name, root):
        problem = "a path outside the destination"
    elif member.isdev():
        problem = "a device file"
    elif member.issym() and not inside(member.linkname, (root / member.name).parent):
        problem = f"a symbolic link leaving the destination ({member.linkname})"
    elif member.islnk() and not inside(member.linkname, root):
        problem = f"a hard link leaving the destination ({member.linkname})"
    if problem:
        raise tarfile.TarError(f"{archive}: member {member.name!r} is {problem}; refusing to extract")
    return member


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m esmgear_fast.data.download {psr,msp,URL} DEST_DIR [--md5 X] [--sha256 Y] [--extract]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m esmgear_fast.data.download",
                                     description="Resumable, checksum-verified download of a data set archive.")
    parser.add_argument("what", help=f"one of {sorted(DATASET_URLS)} or a URL")
    parser.add_argument("dest_dir")
    parser.add_argument("--md5")
    parser.add_argument("--sha256")
    parser.add_argument("--extract", action="store_true", help="extract the tar archive into DEST_DIR afterwards")
    args = parser.parse_args(argv)
    if args.what in DATASET_URLS:
        url, md5 = DATASET_URLS[args.what]
        md5 = args.md5 or md5
    elif "://" in args.what:
        url, md5 = args.what, args.md5
    else:
        parser.error(f"{args.what!r} is neither a known data set ({sorted(DATASET_URLS)}) nor a URL")
    path = download_url(url, args.dest_dir, md5=md5, sha256=args.sha256)
    if args.extract:
        extract_tar(path, args.dest_dir)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
