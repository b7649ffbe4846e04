"""download_url against a local HTTP server on 127.0.0.1 (Range support switchable, interrupted transfers)."""
import hashlib
import http.server
import os
import threading

import pytest

from esmgear_fast.data.download import download_url, file_checksum, missing_data_error

PAYLOAD = bytes((i * 7 + i // 251) % 256 for i in range(300_000))
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path != "/data/archive.tar.gz":
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            cut, srv.cut_after = srv.cut_after, None  # only the first response is cut short
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.requests, srv.honour_range, srv.cut_after = [], True, None
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/data/archive.tar.gz"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def test_fresh_download_verified(server, tmp_path, capsys):
    path = download_url(server.url, tmp_path / "dl", md5=MD5, sha256=SHA256, timeout=5)
    assert path == tmp_path / "dl" / "archive.tar.gz"
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "dl" / "archive.tar.gz.part").exists()
    err = capsys.readouterr().err
    assert server.url in err and str(path) in err
    assert server.requests == [("/data/archive.tar.gz", None)]
    assert file_checksum(path, "sha256") == SHA256


def test_existing_file_not_downloaded_again(server, tmp_path):
    download_url(server.url, tmp_path, md5=MD5, timeout=5, quiet=True)
    download_url(server.url, tmp_path, md5=MD5, timeout=5, quiet=True)
    assert len(server.requests) == 1
    (tmp_path / "archive.tar.gz").write_bytes(b"something else")
    with pytest.raises(ValueError, match="md5 checksum mismatch"):
        download_url(server.url, tmp_path, md5=MD5, timeout=5, quiet=True)


def test_resume_from_part_file(server, tmp_path):
    (tmp_path / "archive.tar.gz.part").write_bytes(PAYLOAD[:123_456])
    path = download_url(server.url, tmp_path, sha256=SHA256, timeout=5, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/data/archive.tar.gz", "bytes=123456-")]


def test_server_without_range_support_starts_over(server, tmp_path):
    server.honour_range = False
    (tmp_path / "archive.tar.gz.part").write_bytes(b"\x00" * 1000)  # wrong bytes that must not survive
    path = download_url(server.url, tmp_path, md5=MD5, timeout=5, quiet=True)
    assert path.read_bytes() == PAYLOAD


def test_interrupted_transfer_resumes(server, tmp_path):
    server.cut_after = 100_000
    path = download_url(server.url, tmp_path, md5=MD5, timeout=5, retries=3, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[0][1] is None
    assert server.requests[1][1] == "bytes=100000-"


def test_checksum_mismatch_removes_part(server, tmp_path):
    with pytest.raises(ValueError) as info:
        download_url(server.url, tmp_path, md5="0" * 32, timeout=5, quiet=True)
    assert MD5 in str(info.value) and "0" * 32 in str(info.value)
    assert os.listdir(tmp_path) == []


def test_http_error_names_url(server, tmp_path):
    url = server.url.replace("archive", "missing")
    with pytest.raises(OSError) as info:
        download_url(url, tmp_path, timeout=5, quiet=True)
    assert url in str(info.value) and "404" in str(info.value)
    assert len(server.requests) == 1  # a 4xx answer is not retried


def test_missing_data_error_message(tmp_path):
    err = missing_data_error("Atom3D PSR", tmp_path / "psr", "https://zenodo.org/record/4915648/files/x.tar.gz",
                             "split-by-year/data/train/data.mdb\nsplit-by-year/data/val/data.mdb")
    assert isinstance(err, FileNotFoundError)
    text = str(err)
    assert text.startswith(f"Atom3D PSR not found at {tmp_path / 'psr'}")
    assert "https://zenodo.org/record/4915648/files/x.tar.gz" in text
    assert "    split-by-year/data/val/data.mdb" in text
    many = missing_data_error("AFDB", "p", ["http://a/1.tar", "http://a/2.tar"], "x.tar")
    assert "http://a/1.tar" in str(many) and "http://a/2.tar" in str(many)


def test_cli_download_and_extract(server, tmp_path):
    import io
    import tarfile

    from esmgear_fast.data import download as dl

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("split-by-year/data/train/data.mdb")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    archive = buf.getvalue()
    global PAYLOAD
    old, PAYLOAD = PAYLOAD, archive  # the handler serves the module-level PAYLOAD
    try:
        assert dl.main([server.url, str(tmp_path), "--md5", hashlib.md5(archive).hexdigest(), "--extract"]) == 0
    finally:
        PAYLOAD = old
    assert (tmp_path / "split-by-year" / "data" / "train" / "data.mdb").read_bytes() == b"hello"
    # the extraction filter refuses members escaping the destination
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):
        dl.extract_tar(evil, tmp_path / "out", quiet=True)
    assert not (tmp_path / "escape.txt").exists()
    assert set(dl.DATASET_URLS) == {"psr", "msp"}
