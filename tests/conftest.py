"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture(scope="module")
def torch_one_thread():
  """Tiny torch ops run faster on one thread (two threads spin-wait for each other)."""
  import torch

  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
