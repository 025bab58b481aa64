"""User errors: one line naming the field or the file, exit status 2, nothing left behind.

References, named in each test: the file or field the user gave, which the message must
name; the bytes of a workdir before a refused run (and its absence, if it did not exist),
which must be what is there after it. A few cases run the CLI in a subprocess, as a user
would; the others call :func:`recurrent.train.loop.train_and_evaluate` directly.
"""

import os
import pathlib
import subprocess
import sys
import warnings

import pytest

from recurrent.train import config as config_lib
from recurrent.train import configs, loop
from tests.workdirs import files

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOT_UTF8 = b"some text, then a byte no UTF-8 text has: \xff and more"


def run_cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUMPY_RANK_PROMOTION": "raise"}
  return subprocess.run(
    [sys.executable, "-m", "recurrent.train", *args, "--config.progress=False"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def make_config(name="adding", **overrides):
  c = configs.get_config(name, "tiny")
  c.progress = False
  c.update(overrides)
  return c


# --- the CLI --------------------------------------------------------------------------------


def test_cli_a_file_that_is_not_utf8_is_one_line_and_no_workdir(tmp_path):
  data, workdir = tmp_path / "input.txt", tmp_path / "run"
  data.write_bytes(NOT_UTF8)
  proc = run_cli("--config", "chars:tiny", f"--config.data_dir={data}", "--workdir", str(workdir))
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.splitlines() == [
    f"error: {data} is not UTF-8 text: byte 0xff at offset 42 (invalid start byte)"
  ]
  assert not workdir.exists()


def test_cli_debug_shows_the_traceback(tmp_path):
  data = tmp_path / "input.txt"
  data.write_bytes(NOT_UTF8)
  proc = run_cli(
    "--config", "chars:tiny", f"--config.data_dir={data}", "--workdir", str(tmp_path / "run"),
    "--debug",
  )  # fmt: skip
  assert proc.returncode not in (0, 2)
  assert "Traceback (most recent call last)" in proc.stderr
  assert f"recurrent.train.config.UserError: {data} is not UTF-8 text" in proc.stderr


def test_cli_a_workdir_that_cannot_be_made_is_one_line(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  proc = run_cli("--config", "adding:tiny", "--workdir", str(blocker / "run"))
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.splitlines() == [
    f"error: cannot write to the workdir {blocker / 'run'}: Not a directory"
  ]


def test_cli_a_changed_config_is_refused_in_one_line_naming_the_flag(tmp_path):
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "10").mkdir(parents=True)  # the check reads no checkpoint
  (workdir / "config.json").write_text(make_config(learning_rate=0.01).to_json(indent=2))
  before = files(workdir)
  proc = run_cli("--config", "adding:tiny", "--workdir", str(workdir))
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: workdir {workdir} was trained"), lines
  assert "learning_rate: 0.01 -> 0.003;" in lines[0] and "--allow_changes" in lines[0]
  assert files(workdir) == before


# --- direct calls: nothing written before the config and the data pass ----------------------


def test_the_error_line_of_an_os_error_names_its_file():
  with warnings.catch_warnings():  # defining --config loads its default with load_module
    warnings.simplefilter("ignore", DeprecationWarning)
    from recurrent.train import __main__ as cli
  error = PermissionError(13, "Permission denied", "/data/input.txt")
  assert cli._error_line(error) == "Permission denied: /data/input.txt"
  assert cli._error_line(config_lib.UserError("config.x must be > 0")) == "config.x must be > 0"


@pytest.mark.parametrize(
  "content, error, message",
  [
    (None, FileNotFoundError, r"No such file or directory: '{data}'"),
    (NOT_UTF8, config_lib.UserError, r"{data} is not UTF-8 text: byte 0xff at offset 42"),
    (b"", config_lib.UserError, r"path {data} is an empty file"),
    (b"ab", config_lib.UserError, r"{data} \(its training split, the first 90%\) has 1 char"),
    (b"x" * 200, config_lib.UserError, r"{data} \(its validation split, the last 10%\) has 20"),
  ],
)
def test_bad_text_files_leave_no_workdir(tmp_path, content, error, message):
  data, workdir = tmp_path / "input.txt", tmp_path / "run"
  if content is not None:
    data.write_bytes(content)
  with pytest.raises(error, match=message.format(data=data)):
    loop.train_and_evaluate(make_config("chars", data_dir=str(data)), workdir)
  assert not workdir.exists()


def test_a_missing_ptb_file_is_named_and_an_existing_workdir_kept(tmp_path):
  (tmp_path / "ptb.train.txt").write_text("a b\n")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("mine")
  with pytest.raises(FileNotFoundError, match="has no ptb.valid.txt"):
    loop.train_and_evaluate(make_config("ptb", data_dir=str(tmp_path)), workdir)
  assert files(workdir) == {"notes.txt": b"mine"}


def test_a_bad_config_value_leaves_no_workdir(tmp_path):
  with pytest.raises(config_lib.UserError, match=r"config\.hidden_size must be > 0, got 0"):
    loop.train_and_evaluate(make_config(hidden_size=0), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_a_config_json_that_is_not_json_is_named(tmp_path):
  (tmp_path / "checkpoints" / "5").mkdir(parents=True)
  (tmp_path / "config.json").write_bytes(b"{\xff")
  with pytest.raises(config_lib.UserError, match=r"config\.json does not read as a config"):
    loop.check_config(tmp_path, make_config(), 20)
  assert (tmp_path / "config.json").read_bytes() == b"{\xff"
