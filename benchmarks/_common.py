"""Helpers shared by ``compare.py`` and ``matmul_floor.py``: shapes, interleaved timing.

Shape legend: B batch, T time, I input size, H hidden size.
"""

import argparse
import os
import random
import statistics
import time

# (B, T, I, H): a mid-sized batch, a large one (most of a CPU run's time), a wide batch of
# short sequences, and one long sequence.
DEFAULT_SHAPES = ((32, 100, 128, 256), (64, 200, 256, 512), (256, 50, 64, 128), (1, 1000, 64, 128))
MIN_REPEATS = 3


def parse_shape(text: str) -> tuple:
  """``"B,T,I,H"`` (or ``BxTxIxH``) as a tuple of four positive ints."""
  try:
    parts = tuple(int(p) for p in text.replace("x", ",").split(","))
  except ValueError:
    parts = ()
  if len(parts) != 4 or min(parts) < 1:
    raise argparse.ArgumentTypeError(f"a shape is B,T,I,H (four positive ints), got {text!r}")
  return parts


def cpu_count() -> int:
  """The CPUs this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def load_average() -> float:
  """The 1-minute load average, NaN where the OS has none."""
  return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def median_ms(seconds) -> float:
  return 1e3 * statistics.median(seconds)


def timed_rounds(calls: dict, repeats: int, seconds: float | None = None) -> dict:
  """Seconds of each ``calls[k]()``, as lists: ``repeats`` rounds (fewer, but at least
  ``MIN_REPEATS``, once ``seconds`` have passed), each calling them all in a fresh random
  order (seeded), so that no call always follows the same other.

  A fixed order would bias the medians: PyTorch's OpenMP threads spin for some ms after a
  call before they sleep and slow whatever runs next. Each call must block until its
  result is ready."""
  rng = random.Random(0)
  samples = {k: [] for k in calls}
  started = time.perf_counter()
  for rep in range(repeats):
    for k in rng.sample(list(calls), len(calls)):
      start = time.perf_counter()
      calls[k]()
      samples[k].append(time.perf_counter() - start)
    if seconds is not None and rep + 1 >= MIN_REPEATS and time.perf_counter() - started > seconds:
      break
  return samples


def interleaved_ms(calls: dict, repeats: int) -> dict:
  """Median ms of each ``calls[k]()`` over ``repeats`` rounds of :func:`timed_rounds`."""
  return {k: median_ms(v) for k, v in timed_rounds(calls, repeats).items()}
