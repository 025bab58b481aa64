"""recurrent.train.synthetic: the adding problem and the copy task.

References, named in each test: the task definitions checked on the arrays with NumPy
(Le et al. 2015 for the adding problem: two markers, one per half, target their values'
sum; Arjovsky et al. 2016 for the copy task: symbols, blanks, delimiter, answer); the exact
value ``Var(u1 + u2) = 1/6`` of the always-1 baseline, within 3 standard errors, and its
expectation by a midpoint rule over ``[0, 1)^2``; the memoryless cross-entropy computed
from the arrays, and that of a brute-force memoryless model (each step's target frequencies
counted on one seed's examples, scored on another's); and, for layout independence, the
same example ids drawn in other batch sizes, positions and orders.

One sequence length per task, so each generator compiles once (threefry compiles slowly).
"""

import numpy as np
import pytest

from recurrent.train import synthetic

T = 201  # odd: the halves are [0, 100) and [100, 201)
HALF = T // 2
S, A, T_COPY = 10, 8, 64  # Arjovsky et al.'s S and A; delay D = T - 2S = 44


@pytest.fixture(scope="module")
def adding():
  task = synthetic.AddingProblem(seq_len=T, seed=3)
  return task, task.examples(np.arange(10_000))


@pytest.fixture(scope="module")
def copy():
  task = synthetic.CopyTask(seq_len=T_COPY, seed=5, copy_length=S, alphabet_size=A)
  return task, task.examples(np.arange(2_000))


def test_adding_problem_definition(adding):
  _, b = adding
  assert b["inputs"].shape == (10_000, T, 2) and b["inputs"].dtype == np.float32
  assert b["targets"].shape == (10_000,) and b["targets"].dtype == np.float32
  np.testing.assert_array_equal(b["example_ids"], np.arange(10_000))
  values, markers = b["inputs"][..., 0], b["inputs"][..., 1]
  assert values.min() >= 0.0 and values.max() < 1.0
  assert set(np.unique(markers)) == {0.0, 1.0}
  assert (markers[:, :HALF].sum(axis=1) == 1).all()  # exactly one marker per half
  assert (markers[:, HALF:].sum(axis=1) == 1).all()
  expected = (values.astype(np.float64) * markers).sum(axis=1)
  np.testing.assert_allclose(b["targets"], expected, rtol=1e-6)
  # Every step of each half gets marked somewhere in 10k examples (uniform positions).
  first, second = markers[:, :HALF].argmax(axis=1), markers[:, HALF:].argmax(axis=1) + HALF
  assert set(first) == set(range(HALF)) and set(second) == set(range(HALF, T))


def test_adding_problem_baseline_mse(adding):
  # Predicting 1 gives E[(u1 + u2 - 1)^2] = Var(u1 + u2) = 1/6; the standard deviation of
  # one squared error is sqrt(1/15 - 1/36), so 3 standard errors on 10k examples ~0.006
  # (which also tells 1/6 from the "0.1767" Le et al. quote).
  _, b = adding
  mse = float(np.mean((b["targets"].astype(np.float64) - 1.0) ** 2))
  assert abs(mse - 1 / 6) < 3 * np.sqrt((1 / 15 - 1 / 36) / 10_000)
  assert abs(mse - 0.1767) > 0.005


def test_adding_problem_baseline_property(adding):
  task, b = adding
  targets = b["targets"].astype(np.float64)
  # The best constant is the target's mean, 1 (3 standard errors, sd sqrt(1/6)) ...
  assert abs(targets.mean() - 1.0) < 3 * np.sqrt(1 / 6 / 10_000)
  # ... and its MSE, by a midpoint rule over the two marked values on [0, 1)^2 (error
  # 1/(6 n^2) for this quadratic), is the property, which the data bear out.
  n = 1_000
  u = (np.arange(n) + 0.5) / n
  quadrature = float(np.mean((u[:, None] + u[None, :] - 1.0) ** 2))
  assert abs(quadrature - task.baseline_mse) < 1 / (6 * n**2) + 1e-12
  assert task.baseline_mse == pytest.approx(1 / 6, rel=1e-15)
  mse = float(np.mean((targets - 1.0) ** 2))
  assert abs(mse - task.baseline_mse) < 3 * np.sqrt((1 / 15 - 1 / 36) / 10_000)


def test_adding_problem_independent_of_batch_layout(adding):
  task, reference = adding

  def rows(ids):
    return {k: v[ids] for k, v in reference.items()}

  small = task.batch(step=3, batch_size=4)  # ids 12..15
  large = task.batch(step=1, batch_size=300)  # ids 300..599: two chunks of the generator
  shuffled = task.examples(np.array([15, 2, 9_999, 15, 0]))
  for batch, ids in ((small, np.arange(12, 16)), (large, np.arange(300, 600))):
    for key, value in rows(ids).items():
      np.testing.assert_array_equal(batch[key], value)
  for key, value in rows(np.array([15, 2, 9_999, 15, 0])).items():
    np.testing.assert_array_equal(shuffled[key], value)
  other_seed = synthetic.AddingProblem(seq_len=T, seed=4).examples(np.arange(4))
  assert not np.array_equal(other_seed["inputs"], reference["inputs"][:4])
  again = synthetic.AddingProblem(seq_len=T, seed=3).batch(step=0, batch_size=4)
  np.testing.assert_array_equal(again["inputs"], reference["inputs"][:4])


def test_copy_task_definition(copy):
  task, b = copy
  assert (task.blank, task.delimiter, task.vocab_size) == (8, 9, 10)
  for key, dtype in (("inputs", np.int32), ("targets", np.int32), ("weights", np.float32)):
    assert b[key].shape == (2_000, T_COPY) and b[key].dtype == dtype
  inputs, targets = b["inputs"], b["targets"]
  delay = T_COPY - 2 * S
  symbols = inputs[:, :S]
  assert symbols.min() >= 0 and symbols.max() < A
  assert (inputs[:, S : S + delay - 1] == task.blank).all()
  assert (inputs[:, S + delay - 1] == task.delimiter).all()
  assert (inputs[:, S + delay :] == task.blank).all()
  assert (targets[:, : T_COPY - S] == task.blank).all()
  np.testing.assert_array_equal(targets[:, T_COPY - S :], symbols)  # the copy
  np.testing.assert_array_equal(
    b["weights"], np.broadcast_to(np.arange(T_COPY) >= T_COPY - S, (2_000, T_COPY))
  )
  # Symbols uniform over the alphabet: 20k draws, each count within 5 sigma of 2.5k.
  counts = np.bincount(symbols.ravel(), minlength=A)
  assert np.all(np.abs(counts - 2_500) < 5 * np.sqrt(20_000 * (1 / 8) * (7 / 8)))


def test_copy_task_memoryless_baseline(copy):
  # Blanks until the answer, then a uniform guess among the A symbols.
  _, b = copy
  probs = np.zeros((*b["targets"].shape, A + 2))
  answer = np.arange(T_COPY) >= T_COPY - S
  probs[:, ~answer, A] = 1.0
  probs[:, answer, :A] = 1.0 / A
  nll = -np.log(np.take_along_axis(probs, b["targets"][..., None], axis=-1)[..., 0])
  np.testing.assert_allclose(nll.mean(), S * np.log(A) / T_COPY, rtol=1e-12)
  weights = b["weights"]
  np.testing.assert_allclose((nll * weights).sum() / weights.sum(), np.log(A), rtol=1e-12)


def test_copy_task_memoryless_baseline_property(copy):
  """A brute-force memoryless model: per step, the frequencies of the targets over one
  seed's examples (all it can know without the symbols), scored on another seed's."""
  task, b = copy
  counts = np.stack([np.bincount(col, minlength=A + 2) for col in b["targets"].T])  # [T, V]
  probs = counts / counts.sum(axis=1, keepdims=True)
  held_out = synthetic.CopyTask(seq_len=T_COPY, seed=6, copy_length=S, alphabet_size=A)
  h = held_out.examples(np.arange(2_000))
  weights = h["weights"].astype(np.float64)
  p_target = np.take_along_axis(probs[None], h["targets"][..., None], axis=-1)[..., 0]
  nll = -np.log(p_target)
  hits = np.argmax(probs, axis=1)[None] == h["targets"]
  loss = float((nll * weights).sum() / weights.sum())
  accuracy = float((hits * weights).sum() / weights.sum())
  want = task.memoryless_baseline
  assert set(want) == {"loss", "accuracy"}
  # Estimated frequencies cost about (A - 1) / (2 N) = 0.002 nats more than the truth;
  # 20k held-out answers give the accuracy to a standard error of 0.0023.
  assert want["loss"] - 0.003 < loss < want["loss"] + 0.02, (loss, want)
  assert abs(accuracy - want["accuracy"]) < 5 * np.sqrt(1 / 8 * 7 / 8 / 20_000), (accuracy, want)
  # Other sizes: log A and 1/A per answer step, whatever S and T.
  for seq_len, length, alphabet in ((21, 10, 8), (100, 3, 30), (5, 1, 2)):
    got = synthetic.CopyTask(seq_len, 0, length, alphabet).memoryless_baseline
    assert got == pytest.approx({"loss": np.log(alphabet), "accuracy": 1 / alphabet}, rel=1e-12)


def test_copy_task_independent_of_batch_layout(copy):
  task, reference = copy
  for step, batch_size in ((0, 7), (5, 3), (3, 257)):
    batch = task.batch(step, batch_size)
    ids = step * batch_size + np.arange(batch_size)
    for key, value in reference.items():
      np.testing.assert_array_equal(batch[key], value[ids])


@pytest.mark.parametrize(
  "make, error, match",
  [
    (lambda: synthetic.AddingProblem(seq_len=1), ValueError, "seq_len must be an int >= 2"),
    (lambda: synthetic.AddingProblem(seq_len=5, seed=-1), ValueError, "seed must be an int"),
    (
      lambda: synthetic.CopyTask(seq_len=20),
      ValueError,
      r"seq_len must be at least 2 \* copy_length \+ 1 = 21 .*got 20",
    ),
    (lambda: synthetic.CopyTask(seq_len=20, alphabet_size=0), ValueError, "alphabet_size"),
    (lambda: synthetic.AddingProblem(5).batch(-1, 4), ValueError, "step >= 0"),
    (lambda: synthetic.AddingProblem(5).batch(0, 2.0), TypeError, "batch_size must be an int"),
    (lambda: synthetic.AddingProblem(5).batch(2**30, 4), ValueError, "overflows int32"),
    (lambda: synthetic.AddingProblem(5).examples([[1]]), ValueError, "1-d int array"),
    (lambda: synthetic.AddingProblem(5).examples([-1]), ValueError, r"in \[0, 2\*\*31\)"),
  ],
)
def test_bad_arguments(make, error, match):
  with pytest.raises(error, match=match):
    make()
