"""Which layout the fast path's forward alone uses: the measured rules, in one place.

Shape legend: B batch (any leading dims, or none), T time, H hidden size, G gates.

The forward alone (not under ``grad``) can lay its arrays out three ways
(:mod:`recurrent.fused.layouts`) and can project its inputs in chunks of steps. Each rule
below is a measurement on XLA:CPU; on other backends, and wherever a shape is symbolic
(``jax.export`` with a symbolic batch or time dimension), the choice is the plain one:
batch-major, all steps projected at once. No rule compares symbolic shapes.
"""

import math

import jax

# The forward alone projects in chunks of time steps when its stacked projection exceeds
# this many bytes (XLA:CPU only, see chunk_rule), each chunk about CHUNK_BYTES.
CHUNK_ABOVE = 32 * 2**20
CHUNK_BYTES = 8 * 2**20


def _concrete(*dims) -> bool:
  return all(isinstance(d, int) for d in dims)


def feature_major(batch: int, width: int) -> bool:
  """Whether ``'auto'`` runs the forward alone feature-major: carries ``[H, B]``, the
  recurrent matmul as ``w_hh^T [G*H, H] @ h [H, B]``.

  On XLA:CPU ``h [B, H] @ w_hh`` can run well below the matmul peak when the batch is
  small, and the transposed product puts the large dimension G*H where the batch was.
  Measured (the performance page's measured rules, feature-major time over batch-major): on a
  2-vCPU Zen 4 host 0.81-0.89 at H=1024 and B=16-32, but 0.91-1.16 at B=8 or 48 and
  0.98-1.60 at H=256-512; on a slower 2-vCPU EPYC host 0.44-0.52 at H=1024 (B=16-32).
  Hence only where it paid on both: B from 16 to 32 and a matmul width G*H of at least
  3072 (the LSTM from H=768, the GRU from H=1024), on the CPU.
  """
  return jax.default_backend() == "cpu" and 16 <= batch <= 32 and width >= 3072


def unbatched(batch_shape: tuple) -> bool:
  """Whether ``'auto'`` runs the forward alone on arrays without their batch dims,
  carries ``[H]``: for a batch of one sequence (at least one batch dim, all 1), on the CPU.

  Measured (the performance page's measured rules, time over the ``[1, H]`` loop, 2-vCPU Zen 4
  host): 0.94-0.98 (LSTM) and 0.97-0.98 (GRU) at (B, T, I, H) = (1, 1000, 64, 128) in
  seven runs, 0.97-0.99 at (1, 200, 128, 256). Under ``grad`` it was slower, so it never
  applies there.
  """
  return jax.default_backend() == "cpu" and len(batch_shape) > 0 and math.prod(batch_shape) == 1


def chunk_rule(num_steps: int, step_bytes: int) -> int | None:
  """How many steps ``'auto'`` projects at a time: None (all at once) or a divisor of T.

  XLA:CPU allocates a program's temporary buffer afresh at every call, and glibc maps one
  above its mmap threshold (32 MiB at most) fresh from the kernel, so it is page-faulted
  in again at every call. The stacked projection ``[T, B..., G*H]`` is most of a forward's
  buffer; projecting ``k`` steps at a time inside an outer loop reuses one chunk's buffer.
  ``step_bytes``: one step's projection, ``B * G * H * itemsize``. Chunks are the largest
  divisor of T that keeps a chunk under ``CHUNK_BYTES``, if that is at least half of it
  (else None); on other backends, None.
  """
  if jax.default_backend() != "cpu" or num_steps * step_bytes <= CHUNK_ABOVE:
    return None
  most = max(1, CHUNK_BYTES // step_bytes)
  chunk = max(k for k in range(1, min(most, num_steps) + 1) if num_steps % k == 0)
  return chunk if 2 * chunk >= most else None


def layout(choice: str, batch_shape: tuple, width: int) -> str:
  """The forward alone's layout for ``Options.layout`` ``choice``: ``'batch'``,
  ``'feature'`` or ``'unbatched'``; ``width`` is G*H."""
  if choice == "unbatched" and not (_concrete(*batch_shape) and math.prod(batch_shape) == 1):
    raise ValueError(
      f"layout='unbatched' needs a batch of one sequence, got batch shape {batch_shape}"
    )
  if choice != "auto":
    return choice
  if not _concrete(*batch_shape, width):
    return "batch"
  if feature_major(math.prod(batch_shape), width):
    return "feature"
  return "unbatched" if unbatched(batch_shape) else "batch"


def chunk(choice, num_steps, step_bytes) -> int | None:
  """The forward alone's chunk of steps for ``Options.projection_chunk`` ``choice``."""
  if choice != "auto":
    if choice is not None and (not _concrete(num_steps) or num_steps % choice):
      raise ValueError(
        f"projection_chunk must divide the number of time steps {num_steps}, got {choice}"
      )
    return choice
  if not _concrete(num_steps, step_bytes):
    return None
  return chunk_rule(num_steps, step_bytes)
