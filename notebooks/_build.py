"""Writes the notebooks of this folder from the cell sources below, and optionally runs them.

    python notebooks/_build.py             # write the four .ipynb files, without outputs
    python notebooks/_build.py --execute   # ... and run them (CPU setting) to keep outputs
    python notebooks/_build.py --keep-outputs  # after editing text: keep unchanged cells' outputs

Cells are separated by lines ``#%% md`` and ``#%% code``. The sources stay here, as plain
text, so a change to a notebook is a readable diff; the ``.ipynb`` files are generated.
Executing runs each notebook in a temporary folder (its ``runs/`` never lands in the repo).
"""

import argparse
import pathlib
import sys
import tempfile

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
COLAB = "https://colab.research.google.com"
BADGE = f"[![Open In Colab]({COLAB}/assets/colab-badge.svg)]"
REPO_URL = "https://github.com/recurrent-jax/recurrent"  # the one place the repository is named
RAW_URL = REPO_URL.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main"


def badge(name: str) -> str:
  repo = REPO_URL.removeprefix("https://github.com/")
  return f"{BADGE}({COLAB}/github/{repo}/blob/main/notebooks/{name}.ipynb)"


INSTALL = r"""
#%% code
# On Colab only: install the package, with its training extra (the configs come with it).
import subprocess
import sys

if "google.colab" in sys.modules:
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "recurrent[train] @ git+REPO_URL"],
                 check=True)
""".replace("REPO_URL", REPO_URL)

SETUP = r"""
#%% code
%matplotlib inline
import os
import pathlib
import shutil
import sys
import warnings

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from IPython.display import display

import recurrent
from recurrent.train.configs import get_config  # get_config("ptb", "tiny"): --config ptb:tiny
from recurrent.train.loop import train_and_evaluate
from recurrent.train.records import MetricsLog

plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (6, 3), "font.size": 9})
# train_and_evaluate imports tqdm.auto, which warns without ipywidgets even with no progress bar.
warnings.filterwarnings("ignore", message="IProgress not found")


def show(fig):
  # display(fig), not plt.show(): train_and_evaluate switches matplotlib to "Agg" to save its
  # curves.png, after which plt.show() draws nothing (%matplotlib inline above registered
  # the figure formatter that display uses).
  display(fig)
  plt.close(fig)

BACKEND = jax.default_backend()  # "cpu", "gpu" or "tpu": the sizes below branch on it
SMOKE = os.environ.get("RECURRENT_NOTEBOOK_SMOKE") == "1"  # CI: a few steps of everything
print(f"jax {jax.__version__}, backend {BACKEND!r}, smoke setting: {SMOKE}")
print("devices:", jax.devices())


def fresh_workdir(name: str) -> pathlib.Path:
  # runs/<name>, emptied first: train_and_evaluate resumes from a workdir's last checkpoint.
  workdir = pathlib.Path("runs") / name
  shutil.rmtree(workdir, ignore_errors=True)
  return workdir
"""

TEXT_DATA = r"""
#%% md
Data: tiny-shakespeare from `$RECURRENT_DATA` (by default `../shared/data` beside the
checkout); on Colab it is downloaded (checked by sha256). Without it, e.g. on a CI machine
with no data, the notebook writes a small corpus of its own so that every cell still runs.
#%% code
from recurrent.train import download

# ../shared/data beside the checkout the package is installed from (an editable install)
CHECKOUT = pathlib.Path(recurrent.__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("RECURRENT_DATA", CHECKOUT.parent / "shared" / "data"))
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
if not SHAKESPEARE.is_file() and "google.colab" in sys.modules:
  SHAKESPEARE = download.fetch(
    "https://raw.githubusercontent.com/karpathy/char-rnn/"
    "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "/content/data/tinyshakespeare",
  )
if SHAKESPEARE.is_file():
  TEXT = SHAKESPEARE.read_text(encoding="utf-8")
  print(f"tiny-shakespeare, {SHAKESPEARE}: {len(TEXT):,} characters")
else:  # a stand-in: random lines of a tiny grammar, 200 KB
  rng = np.random.default_rng(0)
  names = ["ROMEO", "JULIET", "HAMLET", "OPHELIA", "KING LEAR", "CORDELIA", "PORTIA"]
  subjects = ["the king", "my lord", "the night", "this heart", "a rose", "thy love", "the sea"]
  verbs = ["doth keep", "hath lost", "shall see", "would break", "must hold", "cannot find"]
  objects = ["the crown", "my soul", "sweet sorrow", "the morning", "all hope", "her name"]
  lines = []
  while sum(map(len, lines)) < 200_000:
    said = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
            for _ in range(rng.integers(1, 4))]
    lines.append(f"{rng.choice(names)}:\n" + ",\n".join(said).capitalize() + ".\n\n")
  TEXT = "".join(lines)
  print(f"no data in {DATA}: a generated stand-in corpus of {len(TEXT):,} characters")
print(TEXT[:200])
"""


# --- 01 ------------------------------------------------------------------------------------

QUICKSTART = r"""
#%% md
BADGE

# Quickstart: a cell, the scan, a Flax layer and a training run

`recurrent` is built in three layers, and this notebook walks up through them, printing
the shape of every array on the way:

1. a **cell** is a bundle of pure functions (`init`, `initial_carry`, `step`, ...) and
   `recurrent.scan` runs it over time with `lax.scan`;
2. `recurrent.linen.LSTM` / `GRU` are thin Flax modules over the same code;
3. `train_and_evaluate(config, workdir)`, the function `python -m recurrent.train` calls,
   trains a model from a config: a built-in one, `get_config("adding")`, or your own.

Shape letters: B batch, T time, I input size, H hidden size.
INSTALL
SETUP
#%% md
## 1. A cell, by hand

`recurrent.lstm(H)` returns a `Cell`; its params are a named pytree of fused gate weights
(gates in the order i, f, g, o), and its carry is `LSTMState(h, c)`.
#%% code
B, T, I, H = 4, 12, 8, 32  # batch, time, input size, hidden size
cell = recurrent.lstm(H)
params = cell.init(jax.random.key(0), I)
print(f"cell {cell.name!r}: hidden_size {cell.hidden_size}, {cell.num_gates} gates")
print("params:", jax.tree.map(jnp.shape, params))

carry = cell.initial_carry((B,))  # zeros, one row per sequence
x = jax.random.normal(jax.random.key(1), (B, I))  # one time step, [B, I]
carry, h = cell.step(params, carry, x)  # the lax.scan signature: (carry, x) -> (carry, h)
print("one step: x", x.shape, "-> carry", jax.tree.map(jnp.shape, carry), ", h", h.shape)
#%% md
`recurrent.scan` runs the cell over a whole sequence. It computes the input projection of
all T steps in one matmul before the loop, so the loop only does the recurrent half; the
result is the same as calling `cell.step` T times:
#%% code
xs = jax.random.normal(jax.random.key(2), (B, T, I))  # [B, T, I]
final, ys = recurrent.scan(cell, params, xs)
print("xs", xs.shape, "-> ys", ys.shape, "; final carry", jax.tree.map(jnp.shape, final))

carry, loop_ys = cell.initial_carry((B,)), []
for t in range(T):
  carry, h = cell.step(params, carry, xs[:, t])
  loop_ys.append(h)
loop_ys = jnp.stack(loop_ys, axis=1)
print("scan == a Python loop of cell.step:", bool(jnp.allclose(ys, loop_ys, atol=1e-5)))
#%% md
Variable lengths, time-invariant dropout (one key per sequence, see notebook 03) and the
gate activations of every step (`recurrent.trace`, used in notebook 02):
#%% code
lengths = jnp.array([12, 9, 5, 1])  # [B]
final, ys = recurrent.scan(cell, params, xs, seq_lengths=lengths)
print("padding outputs zeros:", bool(jnp.all(ys[2, 5:] == 0)),
      "| sequence 2's final h is its output at step 4:", bool(jnp.allclose(final.h[2], ys[2, 4])))

keys = recurrent.sequence_keys(jax.random.key(3), jnp.arange(B))  # [B] keys
_, ys = recurrent.scan(cell, params, xs, seq_lengths=lengths, dropout=0.25,
                       recurrent_dropout=0.25, key=keys)
print("keys", keys.shape, "-> ys with dropout", ys.shape)

carries, gates = recurrent.trace(cell, params, xs)
print("trace: carries", jax.tree.map(jnp.shape, carries))
print("       gates  ", jax.tree.map(jnp.shape, gates))
#%% md
Stacks of (bidirectional) layers, and gradients: everything is a pure function of
`params`, so `jax.grad` and `jax.jit` apply directly.
#%% code
layers = recurrent.init_layers(cell, jax.random.key(4), I, num_layers=2, bidirectional=True)
print(len(layers), "layers, each", type(layers[0]).__name__,
      "| layer 1 forward w_ih", layers[1].forward.w_ih.shape, "(input: 2H from both directions)")
carries, ys = recurrent.stack(cell, layers, xs, seq_lengths=lengths)
print("stack: ys", ys.shape, "| carries: one per layer, e.g. layer 0 backward h",
      carries[0].backward.h.shape)


@jax.jit
def loss(params, xs):
  _, ys = recurrent.scan(cell, params, xs, seq_lengths=lengths)
  return jnp.mean(ys**2)


grads = jax.grad(loss)(params, xs)
print("grads:", jax.tree.map(jnp.shape, grads))
#%% md
## 2. The Flax linen layer

`recurrent.linen.LSTM` creates the same params with the cell's own `init`, takes the
`'dropout'` rng and calls `recurrent.stack`. `dropout=(0.0, 0.25)` drops only between the
layers, like PyTorch's `nn.LSTM(dropout=...)`; `example_ids` (each sequence's index in the
data set) make the dropout masks independent of the batch layout.
#%% code
import recurrent.linen as rnn

layer = rnn.LSTM(hidden_size=H, num_layers=2, bidirectional=True, dropout=(0.0, 0.25),
                 recurrent_dropout=0.25, return_carry=True)
variables = layer.init(jax.random.key(5), xs, deterministic=True)
print("params:", jax.tree.map(jnp.shape, variables["params"]))

carries, ys = layer.apply(variables, xs, seq_lengths=lengths, deterministic=False,
                          example_ids=jnp.arange(B), rngs={"dropout": jax.random.key(6)})
print("ys", ys.shape, "| carries:", len(carries), "layers, e.g. layer 1 forward c",
      carries[1].forward.c.shape)

# The module's params are the core's: to_core gives what recurrent.stack takes.
_, layer_ys = layer.apply(variables, xs, seq_lengths=lengths, deterministic=True)
_, core_ys = recurrent.stack(cell, rnn.to_core(variables["params"]), xs, seq_lengths=lengths)
print("linen layer == recurrent.stack(to_core(params)):",
      bool(jnp.allclose(layer_ys, core_ys, atol=1e-6)))
#%% md
## 3. Training: the adding problem

Each input step is a pair (value, marker); exactly two steps are marked and the target,
read after the last step, is the sum of the two marked values. Predicting 1 always scores
MSE 1/6 = 0.167. The built-in config `adding` trains a 64-unit LSTM; `train_and_evaluate` writes
`config.json`, `metrics.jsonl`, `curves.png` and checkpoints into the workdir.
#%% code
if SMOKE:
  config = get_config("adding", "tiny")  # seconds, for CI
else:
  config = get_config("adding")  # 2,000 steps of T=50: two to three minutes on a 2-core CPU
  if BACKEND != "cpu":
    config.batch_size = 256  # more examples per step on an accelerator (divides 8 TPU cores)
config.progress = False  # no progress bar in the notebook: the eval lines are printed
print({k: config[k] for k in ("task", "cell", "seq_len", "hidden_size", "batch_size",
                              "train_steps", "learning_rate")})

workdir = fresh_workdir("01_adding")
result = train_and_evaluate(config, workdir)
print("final eval:", result.metrics, "| params:", jax.tree.map(jnp.shape, result.state.params))
#%% code
log = MetricsLog.read(workdir / "metrics.jsonl")
fig, ax = plt.subplots()
for split in ("train", "eval"):
  points = [(r["step"], r["mse"]) for r in log if r["split"] == split]
  ax.plot(*zip(*points), label=split, marker="o" if split == "eval" else None)
ax.axhline(1 / 6, color="gray", linestyle="--", label="always 1 (MSE 1/6)")
ax.set(xlabel="step", ylabel="MSE", yscale="log", title=f"adding problem, T={config.seq_len}")
ax.legend()
show(fig)
#%% md
The trained model on a few held-out examples (from a seed the training batches never use):
#%% code
batch = next(iter(result.task.eval_batches()))
print({k: v.shape for k, v in batch.items()})
outputs, carries = result.task.model.apply(
  {"params": result.state.params}, batch["inputs"], example_ids=batch["example_ids"]
)
print("outputs", outputs.shape, "| final carry h", carries[0].h.shape)
for inputs, target, output in zip(batch["inputs"][:5], batch["targets"][:5], outputs[:5, 0]):
  marked = inputs[inputs[:, 1] == 1, 0]
  print(f"marked values {np.round(marked, 3)}: sum {target:.3f}, model {float(output):.3f}")
"""

# --- 02 ------------------------------------------------------------------------------------

GATES = r"""
#%% md
BADGE

# Inside the gates: what an LSTM and a GRU learn on the adding problem

We train a small LSTM on the adding problem (sum the two marked values of a sequence),
take its params out of the Flax model and run `recurrent.trace`, which returns the carry
and every gate at every step. The cells that solve the task should open their **input
gate** at the marked steps, keep their **forget gate** near 1 in between so the **cell
state** holds the marked values, and the output gate decides when the sum is read out.
Then the same for a GRU: its **update gate** `z` (`h' = (1 - z) * n + z * h`) holds the
state when near 1, and its **reset gate** `r` gates the old state inside the candidate `n`.
INSTALL
SETUP
#%% code
def adding_config(cell: str):
  if SMOKE:
    config = get_config("adding", "tiny")
  else:
    config = get_config("adding")
    if BACKEND == "cpu":  # a shorter problem, so both cells train in about a minute each
      config.seq_len, config.train_steps, config.eval_every = 30, 1500, 500
  config.cell, config.progress = cell, False
  return config


lstm_config = adding_config("lstm")
lstm_result = train_and_evaluate(lstm_config, fresh_workdir("02_adding_lstm"))
print("LSTM:", lstm_result.metrics)
#%% md
The model's recurrent layer `rnn_0` holds the core's params: `recurrent.linen.to_core`
gives one `LSTMParams` per layer, and `recurrent.trace` runs the cell over held-out
sequences. (The trace's `h` is the layer's output: checked below against the Flax layer.)
#%% code
import recurrent.linen as rnn

batch = next(iter(lstm_result.task.eval_batches()))
xs, targets = jnp.asarray(batch["inputs"]), batch["targets"]  # [B, T, 2], [B]
params = lstm_result.state.params
print("model params:", jax.tree.map(jnp.shape, params))
(core,) = rnn.to_core(params["rnn_0"])  # one layer
cell = recurrent.lstm(lstm_config.hidden_size)
carries, gates = recurrent.trace(cell, core, xs)
print("carries:", jax.tree.map(jnp.shape, carries))
print("gates:  ", jax.tree.map(jnp.shape, gates))
layer_ys = rnn.LSTM(lstm_config.hidden_size).apply({"params": params["rnn_0"]}, xs)
print("trace h == the Flax layer's outputs:", bool(jnp.allclose(carries.h, layer_ys, atol=1e-5)))
#%% md
Which units carry the sum? The cell state at the last step of the units most correlated
(over the held-out batch) with the target:
#%% code
def top_units(state, targets, k=3):
  # The k units whose last-step state correlates most (in absolute value) with the target.
  last = np.asarray(state[:, -1])  # [B, H]
  corr = np.nan_to_num([np.corrcoef(last[:, u], targets)[0, 1] for u in range(last.shape[1])])
  order = np.argsort(-np.abs(corr))[:k]
  return order, corr[order]


units, corr = top_units(carries.c, targets)
print("units", units, "correlation of c_T with the target", np.round(corr, 3))


def plot_sequences(xs, series, units, title, num=3):
  # One column per sequence: the input, then each series' chosen units; markers dashed.
  fig, axes = plt.subplots(len(series) + 1, num, figsize=(2.7 * num, 1.1 * (len(series) + 1)),
                           sharex=True, squeeze=False)
  for col in range(num):
    marks = np.flatnonzero(np.asarray(xs[col, :, 1]))
    axes[0, col].bar(np.arange(xs.shape[1]), np.asarray(xs[col, :, 0]), color="lightgray")
    axes[0, col].bar(marks, np.asarray(xs[col, marks, 0]), color="crimson")
    axes[0, col].set_title(f"sequence {col}: sum {float(xs[col, marks, 0].sum()):.2f}")
    for row, (name, values) in enumerate(series.items(), start=1):
      axes[row, col].plot(np.asarray(values[col][:, units]))
      for m in marks:
        axes[row, col].axvline(m, color="crimson", linestyle="--", linewidth=0.8)
      if col == 0:
        axes[row, col].set_ylabel(name)
  axes[0, 0].set_ylabel("input")
  axes[-1, 0].set_xlabel("step")
  fig.suptitle(title)
  fig.tight_layout()
  show(fig)


plot_sequences(xs, {"input i": gates.i, "forget f": gates.f, "output o": gates.o,
                    "cell c": carries.c}, units, f"LSTM, units {units} (the sum's carriers)")
#%% md
Red bars and dashed lines: the marked steps. The input gate of the strongest carrier (the
first unit listed) is nearly shut between the marks and opens only at them; its forget
gate dips at a mark, while the cell state takes in the value, and sits high in between
(about 0.9 to 0.95 in the run saved here: not a perfect 1, so the stored value fades
slowly, which 30 steps allow), so its cell state steps at the marks and is held between
them. The sum is read out of the last step's state by the dense layer, which is why the
final cell state correlates so strongly with the target. A heat map of all units of one
sequence (units sorted by that correlation, the carriers at the top):
#%% code
order = np.argsort(-np.abs(np.nan_to_num(
  [np.corrcoef(np.asarray(carries.c[:, -1, u]), targets)[0, 1] for u in range(cell.hidden_size)]
)))
fig, axes = plt.subplots(1, 4, figsize=(10, 2.4), sharey=True)
for ax, (name, values) in zip(axes, [("input i", gates.i), ("forget f", gates.f),
                                     ("output o", gates.o), ("cell c", carries.c)]):
  image = ax.imshow(np.asarray(values[0][:, order]).T, aspect="auto", interpolation="nearest")
  for m in np.flatnonzero(np.asarray(xs[0, :, 1])):
    ax.axvline(m, color="red", linewidth=0.8)
  ax.set(title=name, xlabel="step")
  fig.colorbar(image, ax=ax, shrink=0.8)
axes[0].set_ylabel("unit (sorted)")
fig.tight_layout()
show(fig)
#%% md
## The GRU

Same task, same size, `config.cell = "gru"`. A GRU's carry is its output `h`; the update
gate `z` near 1 copies `h` forward unchanged and `z` near 0 overwrites it with the
candidate `n`, so a unit that stores a value should hold (`z` high) after a mark and
write (`z` low) at one.
#%% code
gru_config = adding_config("gru")
gru_result = train_and_evaluate(gru_config, fresh_workdir("02_adding_gru"))
print("GRU:", gru_result.metrics)

batch = next(iter(gru_result.task.eval_batches()))
xs, targets = jnp.asarray(batch["inputs"]), batch["targets"]
(core,) = rnn.to_core(gru_result.state.params["rnn_0"])
print("GRU params:", jax.tree.map(jnp.shape, core))
carries, gates = recurrent.trace(recurrent.gru(gru_config.hidden_size), core, xs)
print("gates:", jax.tree.map(jnp.shape, gates))
units, corr = top_units(carries.h, targets)
print("units", units, "correlation of h_T with the target", np.round(corr, 3))
plot_sequences(xs, {"update z": gates.z, "reset r": gates.r, "state h": carries.h}, units,
               f"GRU, units {units}")
#%% md
In the run saved here the carriers' update gate is about 0.4 before the first mark (the
unit is free to change: nothing worth keeping yet), jumps to about 0.9 at the first mark
and stays high, decaying slowly, so the state holds the first value; at the second mark
`z` drops and the unit writes again, just before the read-out.
"""

# --- 03 ------------------------------------------------------------------------------------

DROPOUT = r"""
#%% md
BADGE

# Dropout that respects time

Dropout in an RNN can draw a new mask at every time step ("naive", as Zaremba et al. 2014
use it between layers) or one mask per sequence, reused at every step ("variational", Gal
& Ghahramani 2016), which also makes dropout on the recurrent state `h_{t-1}` work. This
notebook draws both kinds of masks, trains the same small character-level language model
with no dropout, naive dropout and variational dropout, and evaluates the last with MC
dropout (the average prediction over several dropout masks).
INSTALL
SETUP
#%% md
## Masks

`recurrent.sequence_keys(key, example_ids)` gives one key per sequence from its index in
the data set; `recurrent.dropout.masks` draws one mask per key, and
`recurrent.dropout.apply` multiplies a whole sequence by it. The naive masks are what the
training models use with `dropout_kind="naive"`: Flax's `nn.Dropout`, a new mask per
element.
#%% code
import flax.linen as nn

B, T, F, rate = 3, 40, 24, 0.5  # sequences, steps, features, drop probability
keys = recurrent.sequence_keys(jax.random.key(0), jnp.arange(B))  # [B]
(masks,) = recurrent.dropout.masks(keys, F, rate)  # [B, F]: values 0 or 1 / (1 - rate)
ones = jnp.ones((B, T, F))
variational = recurrent.dropout.apply(keys, ones, rate)  # [B, T, F]
naive = nn.Dropout(rate, deterministic=False).apply({}, ones, rngs={"dropout": jax.random.key(0)})
print("masks", masks.shape, "| variational", variational.shape, "| naive", naive.shape)
print("variational: every step uses the sequence's mask:",
      bool(jnp.all(variational == masks[:, None, :])))

fig, axes = plt.subplots(2, B, figsize=(9, 3.6), sharex=True, sharey=True)
for b in range(B):
  for row, (name, seq) in enumerate([("naive", naive), ("variational", variational)]):
    axes[row, b].imshow(np.asarray(seq[b]).T, aspect="auto", cmap="gray_r", vmin=0, vmax=2)
    axes[row, b].set_title(f"{name}, sequence {b}")
  axes[1, b].set_xlabel("time step")
axes[0, 0].set_ylabel("feature")
axes[1, 0].set_ylabel("feature")
fig.tight_layout()
show(fig)
#%% md
Black: dropped units. A sequence's mask depends on its key only, so it does not change
when the batch is laid out differently, e.g. the same examples in another order, in a
smaller batch, or sharded over other devices:
#%% code
(reordered,) = recurrent.dropout.masks(
  recurrent.sequence_keys(jax.random.key(0), jnp.array([2, 0])), F, rate
)
print("example 2 keeps its mask in another batch:", bool(jnp.all(reordered[0] == masks[2])))
print("example 0 too:", bool(jnp.all(reordered[1] == masks[0])))
#%% md
## Three language models

A character-level LSTM on a small slice of tiny-shakespeare (30,000 characters, 90% for
training), small enough that an unregularised model overfits within minutes on a CPU.
All three runs use the built-in config `chars` with the same size and steps; only the dropout
differs:

- **none**;
- **naive**: `dropout_kind="naive"`, a new mask per step on the LSTM's input and output
  (no recurrent dropout: a per-step mask on `h_{t-1}` is what Gal & Ghahramani show fails);
- **variational**: one mask per sequence on the input, the output and `h_{t-1}`
  (`recurrent_dropout`), evaluated also with MC dropout (`mc_samples`).
TEXT_DATA
#%% code
if SMOKE:
  SIZE = dict(hidden_size=16, seq_len=16, batch_size=4, train_steps=12)
elif BACKEND == "cpu":
  SIZE = dict(hidden_size=128, seq_len=64, batch_size=32, train_steps=900)
else:  # same problem, a wider model and longer training
  SIZE = dict(hidden_size=256, seq_len=64, batch_size=32, train_steps=2000)
RATE, MC_SAMPLES = 0.3, 2 if SMOKE else 10

workdir = fresh_workdir("03_dropout")
workdir.mkdir(parents=True)
corpus = workdir / "corpus.txt"
corpus.write_text(TEXT[:30_000], encoding="utf-8")


def dropout_config(kind: str):
  config = get_config("chars")
  config.update(SIZE)
  config.data_dir = str(corpus)
  config.num_layers, config.embed_size, config.learning_rate = 1, 32, 6e-3
  config.eval_every = config.log_every = max(config.train_steps // (3 if SMOKE else 12), 1)
  config.checkpoint_every = config.train_steps
  config.sample_length, config.progress = 0, False
  config.dropout = config.recurrent_dropout = config.output_dropout = 0.0
  if kind == "naive":
    config.dropout_kind, config.dropout, config.output_dropout = "naive", RATE, RATE
  elif kind == "variational":
    config.dropout = config.recurrent_dropout = config.output_dropout = RATE
    config.mc_samples = MC_SAMPLES
  return config


print({k: dropout_config("none")[k] for k in ("hidden_size", "seq_len", "batch_size",
                                              "train_steps", "learning_rate")})
results = {}
for kind in ("none", "naive", "variational"):
  print(f"--- {kind}")
  results[kind] = train_and_evaluate(dropout_config(kind), workdir / kind)
#%% code
logs = {kind: MetricsLog.read(workdir / kind / "metrics.jsonl") for kind in results}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for (kind, log), color in zip(logs.items(), ["C0", "C1", "C2"]):
  for split, style in (("train", ":"), ("eval", "-"), ("eval_mc", "--")):
    points = [(r["step"], r["perplexity"]) for r in log if r["split"] == split]
    if points:
      label = {"train": f"{kind} (train)", "eval": kind, "eval_mc": f"{kind}, MC dropout"}[split]
      axes[int(split != "train")].plot(*zip(*points), style, color=color, label=label)
axes[0].set(title="training perplexity (dropout on)", xlabel="step", ylabel="perplexity")
axes[1].set(title="validation perplexity", xlabel="step")
for ax in axes:
  ax.legend()
fig.tight_layout()
show(fig)

print(f"{'dropout':12s} {'best valid':>10s} {'final valid':>11s} {'final train':>11s}")
for kind, log in logs.items():
  valid = [r["perplexity"] for r in log if r["split"] == "eval"]
  train = [r["perplexity"] for r in log if r["split"] == "train"]
  print(f"{kind:12s} {min(valid):10.3f} {valid[-1]:11.3f} {train[-1]:11.3f}")
mc = results["variational"].metrics["eval_mc"]["perplexity"]
print(f"variational, MC dropout ({MC_SAMPLES} samples), final valid: {mc:.3f}")
#%% md
Without dropout the training perplexity keeps falling while the validation perplexity
turns up after a couple of hundred steps: the model memorises its 27,000 characters. Both
kinds of dropout hold it down. In the run saved here (CPU setting) naive dropout levels
off near 6.1 while variational dropout, which also drops the recurrent state, learns more
slowly at first but is still improving at the end and finishes lowest (about 5.9), with
its training perplexity, measured with dropout on, close to its validation perplexity.
The gaps Gal & Ghahramani report on Penn Treebank come from much longer training of
larger models (the `ptb` config's variants `zaremba_medium` and `gal_medium`).

## MC dropout by hand

`train_and_evaluate` reported the MC-dropout perplexity above (`eval_mc`). The same
evaluation with `recurrent.mc_average`, on the first batch of validation windows, as the
number of samples grows. Each window starts here from a zero state, where the loop
carries the state from window to window; with this small corpus the validation split is
a single batch, so the deterministic number is the loop's.
#%% code
result = results["variational"]
model, params = result.task.model, result.state.params
batch = next(iter(result.task.eval_batches()))
inputs, targets = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])  # [B, T]
print("validation windows:", inputs.shape)


def perplexity(probs):  # probs [B, T, V]
  picked = jnp.take_along_axis(probs, targets[..., None], axis=-1)
  return float(jnp.exp(-jnp.mean(jnp.log(picked))))


def predict(key):  # one dropout sample: the model with dropout on, as in training
  logits, _ = model.apply({"params": params}, inputs, example_ids=batch["example_ids"],
                          deterministic=False, rngs={"dropout": key})
  return jax.nn.softmax(logits)


logits, _ = model.apply({"params": params}, inputs, example_ids=batch["example_ids"])
print(f"dropout off: perplexity {perplexity(jax.nn.softmax(logits)):.3f}")
for n in [2] if SMOKE else [1, 3, 10, 30]:
  probs = jax.jit(recurrent.mc_average, static_argnums=(0, 2))(predict, jax.random.key(1), n)
  print(f"MC dropout, {n:2d} samples: perplexity {perplexity(probs):.3f}")
#%% md
A single dropout sample is much worse than the deterministic model; averaging samples
closes most of that gap. Whether the MC average beats the deterministic approximation
depends on the model and the data: Gal & Ghahramani gain about one point of perplexity on
Penn Treebank with large models trained for dozens of epochs.
## Penn Treebank: the same code, four kinds of dropout

The repository keeps the runs behind its Penn Treebank results table (`docs/results.md`):
Zaremba et al.'s small model (2 x 200 LSTM, 13 epochs, their schedule) with (a) no
dropout, (b) naive per-step dropout on the non-recurrent connections, (c) time-invariant
dropout with one mask shared by the gates, on the inputs, the outputs and `h`, and (d)
time-invariant untied masks (one per gate) plus word-type embedding dropout. This cell
reads their `metrics.jsonl` from the checkout, or from GitHub when the package was
installed without one (on Colab).
#%% code
import json
import urllib.request

RESULTS = CHECKOUT / "results" / "ptb"
RAW = "RAW_URL/results/ptb"
ABLATION = {"zaremba_small": "(a) no dropout", "small_naive": "(b) naive",
            "small_tied": "(c) time-invariant, tied", "small_untied": "(d) untied + words"}


def ptb_records(run):
  path = RESULTS / run / "metrics.jsonl"
  try:
    text = (path.read_text() if path.is_file()
            else urllib.request.urlopen(f"{RAW}/{run}/metrics.jsonl", timeout=10).read().decode())
  except OSError as error:  # no checkout and no network
    print(f"{run}: not available ({error})")
    return None
  return [json.loads(line) for line in text.splitlines()]


fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
print(f"{'run':28s} {'valid':>6s} {'test':>6s} {'test, MC':>8s}")
for (run, label), color in zip(ABLATION.items(), ["C0", "C1", "C2", "C3"]):
  log = ptb_records(run)
  if not log:
    continue
  epoch = max(r["step"] for r in log) / 13  # 13 epochs
  for ax, split in zip(axes, ("train", "eval")):
    points = [(r["step"] / epoch, r["perplexity"]) for r in log if r["split"] == split]
    ax.plot(*zip(*points), color=color, label=label, marker="o" if split == "eval" else None,
            markersize=3)
  last = {r["split"]: r["perplexity"] for r in log}
  print(f"{label:28s} {last.get('eval', float('nan')):6.1f} {last.get('test', float('nan')):6.1f}"
        f" {last.get('test_mc', float('nan')):8.1f}")
for ax, title in zip(axes, ("training perplexity (dropout on)", "validation perplexity")):
  ax.set(title=title, xlabel="epoch", yscale="log", ylim=(70, 400))
  ax.grid(alpha=0.3, which="both")
axes[1].axhline(120.7, color="gray", linestyle=":", label="Zaremba et al. small, 120.7")
axes[1].legend(fontsize=8)
fig.tight_layout()
show(fig)
"""

# --- 04 ------------------------------------------------------------------------------------

LANGUAGE_MODEL = r"""
#%% md
BADGE

# A character-level language model on all the devices you have

The training loop shards every batch over a `Mesh` of all devices (`'data'` axis) and
replicates the params, so the same code runs on one CPU, a GPU or the 8 cores of a Colab
TPU. This notebook sizes the model from `jax.default_backend()`: a 2 x 512 LSTM on a TPU
or GPU (`Runtime > Change runtime type`), a small one on a CPU, where two virtual CPU
devices stand in for the accelerators so the data-parallel path is exercised anyway. At
the end it samples text from the trained model.
INSTALL
#%% code
import os

# On a CPU, two virtual devices (set before jax is imported); GPUs and TPUs ignore it.
if "XLA_FLAGS" not in os.environ:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
SETUP
TEXT_DATA
#%% code
workdir = fresh_workdir("04_chars")
workdir.mkdir(parents=True)
corpus = workdir / "input.txt"
corpus.write_text(TEXT, encoding="utf-8")

config = get_config("chars")  # 2 x 256 LSTM, dropout 0.2, 3,000 steps of 32 x 100
config.data_dir = str(corpus)
devices = jax.devices()
if SMOKE:
  config.update(dict(hidden_size=16, embed_size=8, num_layers=1, seq_len=16, train_steps=10,
                     eval_every=10, log_every=5, batch_size=4 * len(devices)))
elif BACKEND in ("gpu", "tpu"):  # about 20 epochs of tiny-shakespeare
  config.update(dict(hidden_size=512, num_layers=2, batch_size=16 * max(len(devices), 4),
                     train_steps=3000, eval_every=500, log_every=100))
else:  # CPU: about two minutes on 2 cores
  config.update(dict(hidden_size=128, embed_size=32, num_layers=1, seq_len=64, batch_size=32,
                     learning_rate=4e-3, train_steps=800, eval_every=200, log_every=100,
                     dropout=0.0, recurrent_dropout=0.0, output_dropout=0.0))
config.checkpoint_every = config.train_steps
config.sample_length, config.progress = 0, False
print(f"{len(devices)} devices; {config.batch_size // len(devices)} sequences per device")
print({k: config[k] for k in ("hidden_size", "num_layers", "seq_len", "batch_size",
                              "train_steps", "dropout", "recurrent_dropout")})
#%% code
result = train_and_evaluate(config, workdir, devices=devices)
print("final eval:", result.metrics)
#%% md
The params are replicated over the mesh and the carry that truncated backpropagation
through time hands from one batch to the next is sharded by sequence:
#%% code
state = result.state
w_hh = state.params["rnn_0"]["layer_0"]["w_hh"]
print("w_hh", w_hh.shape, w_hh.sharding)
carry_h = state.carry[0].h
print("carry h", carry_h.shape, carry_h.sharding)
print("on devices:", sorted(d.id for d in carry_h.sharding.device_set))
#%% code
log = MetricsLog.read(workdir / "metrics.jsonl")
fig, ax = plt.subplots()
for split in ("train", "eval"):
  points = [(r["step"], r["perplexity"]) for r in log if r["split"] == split]
  ax.plot(*zip(*points), label=split, marker="o" if split == "eval" else None)
ax.set(xlabel="step", ylabel="perplexity (per character)", yscale="log",
       title=f"{config.num_layers} x {config.hidden_size} LSTM on {BACKEND}")
ax.legend()
show(fig)
speed = [r["tokens_per_sec"] for r in log if r["split"] == "train"][-1]
print(f"training speed: {speed:,.0f} characters per second")
#%% md
## Sampling

`recurrent.train.sampling.sample` runs the model one character at a time under
`lax.scan`, feeding back each sampled character; a lower temperature is greedier.
#%% code
from recurrent.train import sampling

vocab = result.task.vocab
prompt = "ROMEO:\n" if all(ch in vocab for ch in "ROMEO:\n") else TEXT[:10]
length = 40 if SMOKE else 300
for temperature in (0.5, 1.0):
  tokens = sampling.sample(result.task.model, state.params, vocab.encode(prompt), length,
                           jax.random.key(0), temperature=temperature)
  print(f"--- temperature {temperature}\n{prompt}{vocab.decode(np.asarray(tokens))}\n")
"""

NOTEBOOKS = {
  "01_quickstart": QUICKSTART,
  "02_inside_the_gates": GATES,
  "03_dropout_that_respects_time": DROPOUT,
  "04_language_model_tpu": LANGUAGE_MODEL,
}


def cells(name: str, source: str) -> list:
  """The notebook's cells from ``#%% md`` / ``#%% code`` separated text."""
  source = source.replace("BADGE", badge(name)).replace("INSTALL", INSTALL)
  source = source.replace("SETUP", SETUP).replace("TEXT_DATA", TEXT_DATA)
  source = source.replace("RAW_URL", RAW_URL)
  out, kind, lines = [], None, []

  def flush():
    text = "\n".join(lines).strip("\n")
    if kind == "md":
      out.append(nbformat.v4.new_markdown_cell(text))
    elif kind == "code":
      out.append(nbformat.v4.new_code_cell(text))

  for line in source.splitlines():
    if line in ("#%% md", "#%% code"):
      flush()
      kind, lines = line.split()[1], []
    else:
      lines.append(line)
  flush()
  return out


def notebook(name: str, source: str):
  nb = nbformat.v4.new_notebook(cells=cells(name, source))
  nb.metadata.update(
    kernelspec={"name": "python3", "display_name": "Python 3", "language": "python"},
    language_info={"name": "python"},
    accelerator="TPU" if name.endswith("_tpu") else None,
    colab={"provenance": []},
  )
  if nb.metadata["accelerator"] is None:
    del nb.metadata["accelerator"]
  return nb


def execute(nb, name: str) -> None:
  import nbclient

  with tempfile.TemporaryDirectory(prefix=f"{name}_") as workdir:
    client = nbclient.NotebookClient(
      nb, kernel_name="python3", timeout=1800, record_timing=False,
      resources={"metadata": {"path": workdir}},
    )  # fmt: skip
    client.execute()


def keep_outputs(nb, path: pathlib.Path) -> None:
  """Copies the outputs of ``path``'s code cells into ``nb``'s where the code is unchanged."""
  if not path.is_file():
    return
  old = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
  new = [c for c in nb.cells if c.cell_type == "code"]
  for before, after in zip(old, new):
    if before.source == after.source:
      after.outputs, after.execution_count = before.outputs, before.execution_count


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--execute", action="store_true", help="run each notebook, keep outputs")
  parser.add_argument(
    "--keep-outputs", action="store_true", help="keep the outputs of unchanged code cells"
  )
  parser.add_argument("names", nargs="*", help="notebooks to write (default: all)")
  args = parser.parse_args(argv)
  for name, source in NOTEBOOKS.items():
    if args.names and name not in args.names:
      continue
    nb = notebook(name, source)
    if args.execute:
      print(f"executing {name} ...", file=sys.stderr)
      execute(nb, name)
    elif args.keep_outputs:
      keep_outputs(nb, HERE / f"{name}.ipynb")
    nbformat.validate(nb)
    nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
  main()
