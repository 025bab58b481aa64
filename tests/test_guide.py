"""The worked example of docs/cells.md ("Write your own cell") runs as printed, and its
Elman cell equals a float64 NumPy loop of ``h' = tanh(x W_ih + h W_hh + b)``, with its fast
path and without (plain autodiff), gradients included."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

import recurrent

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "cells.md"


def _example() -> dict:
  (code,) = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
  namespace = {}
  exec(compile(code, str(GUIDE), "exec"), namespace)  # noqa: S102  the guide's own code
  return namespace


def _numpy_elman(params, xs):
  w_ih, w_hh, b = (np.asarray(a, np.float64) for a in params)
  h = np.zeros((xs.shape[0], w_hh.shape[0]))
  ys = []
  for t in range(xs.shape[1]):
    h = np.tanh(np.asarray(xs[:, t], np.float64) @ w_ih + h @ w_hh + b)
    ys.append(h)
  return np.stack(ys, axis=1)


def test_guide_example_runs_and_equals_numpy():
  cell = _example()["elman"](6)
  params = cell.init(jax.random.key(0), 3)
  params = params._replace(b=params.b + 0.1)
  xs = jnp.asarray(np.random.default_rng(0).standard_normal((4, 9, 3)), jnp.float32)
  for c in (cell, cell._replace(fast=None)):
    np.testing.assert_allclose(
      recurrent.scan(c, params, xs)[1], _numpy_elman(params, xs), rtol=1e-5, atol=1e-6
    )

  def loss(c):
    return jax.grad(lambda p, x: jnp.sum(jnp.sin(recurrent.scan(c, p, x)[1])), argnums=(0, 1))

  got, want = loss(cell)(params, xs), loss(cell._replace(fast=None))(params, xs)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
