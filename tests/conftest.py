"""Fixtures shared by the test modules."""

import jax
import pytest


@pytest.fixture(scope="module")
def torch_one_thread():
  """Tiny torch ops run faster on one thread (two threads spin-wait for each other)."""
  import torch

  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture
def eager():
  """Runs op by op (``jax.disable_jit``): on a 2-core CPU, compiling every configuration of
  the Flax-wrapper tests costs far more than running their tiny shapes."""
  with jax.disable_jit():
    yield
