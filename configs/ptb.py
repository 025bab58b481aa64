"""Word-level Penn Treebank language models, with the published setups.

Variants (``--config configs/ptb.py:<variant>``); perplexities are the papers' (valid / test):

- ``zaremba_small`` (default): Zaremba et al. 2014, non-regularised 2 x 200: 120.7 / 114.5.
- ``zaremba_medium``: 2 x 650, naive dropout 0.5: 86.2 / 82.7.
- ``zaremba_large``: 2 x 1500, naive dropout 0.65: 82.2 / 78.4.
- ``gal_medium``: Gal & Ghahramani 2016, variational, untied weights, 2 x 650:
  81.9 / 79.7 (MC dropout test: 78.6).
- ``gal_large``: 2 x 1500: 77.9 / 75.2 (MC dropout test: 73.4).
- ``tiny``: seconds, for tests.

Gal & Ghahramani keep every other hyper-parameter of Zaremba et al. and tune only the
dropout: 0.5 on the layer inputs and outputs, and 0.2 (medium) / 0.3 (large) on the
embeddings (whole word types) and the recurrent state.

    python -m recurrent.train --config configs/ptb.py:gal_medium --config.data_dir=DIR \
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
    _zaremba(c, 650, 0.05, 5.0, 35, 6, 39, 0.8)
    c.dropout_kind, c.dropout, c.output_dropout = "naive", 0.5, 0.5
  elif variant == "zaremba_large":
    _zaremba(c, 1500, 0.04, 10.0, 35, 14, 55, 1 / 1.15)
    c.dropout_kind, c.dropout, c.output_dropout = "naive", 0.65, 0.65
  elif variant in ("gal_medium", "gal_large"):
    medium = variant == "gal_medium"
    if medium:
      _zaremba(c, 650, 0.05, 5.0, 35, 6, 39, 0.8)
    else:
      _zaremba(c, 1500, 0.04, 10.0, 35, 14, 55, 1 / 1.15)
    c.dropout, c.output_dropout = 0.5, 0.5
    c.recurrent_dropout = c.embed_dropout = 0.2 if medium else 0.3
    c.weight_decay = 1e-7
    c.mc_samples = 10  # Gal & Ghahramani also report MC-dropout perplexity
  elif variant == "tiny":
    _zaremba(c, 16, 0.1, 5.0, 8, 1, 0, 0.5)
    c.batch_size, c.train_steps = 4, 20
    c.eval_every, c.log_every, c.checkpoint_every = 10, 5, 10
    c.dropout, c.recurrent_dropout = 0.2, 0.2
  else:
    raise ValueError(
      "configs/ptb.py variants: zaremba_small, zaremba_medium, zaremba_large, gal_medium,"
      f" gal_large, tiny; got {variant!r}"
    )
  return c
