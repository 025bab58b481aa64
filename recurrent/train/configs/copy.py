"""The copy (memory) task of Arjovsky et al. (2016): remember S symbols over a delay.

The memoryless baseline scores a cross-entropy of log(8) = 2.08 on the answer steps.

    python -m recurrent.train --config copy --workdir runs/copy
"""

from recurrent.train.config import base_config


def get_config(variant: str = ""):
  c = base_config()
  c.task = "copy"
  c.seq_len = 40  # T = 2 S + delay
  c.copy_symbols = 10  # S
  c.copy_alphabet = 8
  c.cell = "lstm"
  c.hidden_size = 128
  c.optimizer = "adam"
  c.learning_rate = 2e-3
  c.max_grad_norm = 1.0
  c.batch_size = 64
  c.train_steps = 3000
  c.eval_every = 500
  if variant == "tiny":
    c.seq_len, c.copy_symbols, c.hidden_size, c.batch_size = 12, 3, 16, 16
    c.train_steps, c.eval_every, c.log_every, c.checkpoint_every = 20, 10, 5, 10
    c.eval_examples = 64
  elif variant:
    raise ValueError(f"config 'copy' has variants '' and 'tiny', got {variant!r}")
  return c
