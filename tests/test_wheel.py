"""The package as a user installs it: a wheel, in a fresh virtual environment, trains.

Reference: a user's install, ``pip install recurrent[train]`` from a wheel, then
``python -m recurrent.train --config adding:tiny`` in a folder outside the checkout. The
wheel is built from a copy of the files the build reads (so the build leaves nothing in the
checkout) and installed without its dependencies into a new venv that sees this
environment's packages (jax, flax, ...) through a ``.pth`` line, which adds the folder but
not its ``.pth`` files: this checkout's editable install does not come with it, so the
``recurrent`` that runs is the wheel's. No download: the build uses this environment's
setuptools where it can build wheels itself (>= 70.1), and pip's isolated build otherwise.
"""

import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ["__init__", "adding", "chars", "copy", "ptb"]


def run(*args, **kwargs):
  proc = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
  assert proc.returncode == 0, f"{args}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


def build_wheel(tmp_path) -> pathlib.Path:
  source, dist = tmp_path / "source", tmp_path / "dist"
  ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
  shutil.copytree(ROOT / "recurrent", source / "recurrent", ignore=ignore)
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source / name)
  setuptools = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
  isolation = ["--no-build-isolation"] if setuptools >= (70, 1) else []
  pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(dist)]
  run(*pip, str(source))
  (wheel,) = dist.glob("recurrent-*.whl")
  return wheel


def test_the_wheel_installs_and_trains_outside_the_checkout(tmp_path):
  wheel = build_wheel(tmp_path)
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
  assert {f"recurrent/train/configs/{name}.py" for name in CONFIGS} <= names
  assert not [n for n in names if n.startswith(("configs/", "tests/", "notebooks/"))]

  venv = tmp_path / "venv"
  run(sys.executable, "-m", "venv", "--without-pip", str(venv))
  python = venv / "bin" / "python"
  site = run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
  (pathlib.Path(site.strip()) / "this_environment.pth").write_text("\n".join(paths) + "\n")
  pip = [sys.executable, "-m", "pip", "--python", str(python)]  # this pip, the new venv
  run(*pip, "install", "--no-deps", "--no-index", str(wheel))

  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(JAX_PLATFORMS="cpu")
  spec = "import importlib.util as u; print(u.find_spec('recurrent').origin)"
  origin = pathlib.Path(run(str(python), "-c", spec, cwd=cwd, env=env).strip())
  assert origin.is_relative_to(venv), origin  # the wheel's, not the checkout's

  workdir = tmp_path / "run"
  out = run(
    str(python), "-m", "recurrent.train",
    "--config", "adding:tiny", "--workdir", str(workdir), "--config.progress=False",
    cwd=cwd, env=env,
  )  # fmt: skip
  assert "step=20 split=eval" in out
  assert (workdir / "curves.png").is_file()
  assert (workdir / "checkpoints" / "20").is_dir()
