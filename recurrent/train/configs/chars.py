"""Character-level language model on any text file (e.g. tiny-shakespeare's input.txt).

python -m recurrent.train --config chars --config.data_dir=input.txt --workdir runs/chars
"""

from recurrent.train.config import base_config


def get_config(variant: str = ""):
  c = base_config()
  c.task = "chars"
  c.data_dir = "data/tinyshakespeare/input.txt"  # a UTF-8 text file
  c.seq_len = 100  # truncated-BPTT window
  c.cell = "lstm"
  c.hidden_size = 256
  c.num_layers = 2
  c.embed_size = 64
  c.dropout = 0.2
  c.recurrent_dropout = 0.2
  c.output_dropout = 0.2
  c.optimizer = "adam"
  c.learning_rate = 2e-3
  c.max_grad_norm = 1.0
  c.batch_size = 32
  c.train_steps = 3000
  c.eval_every = 500
  c.sample_length = 400
  if variant == "tiny":
    c.seq_len, c.hidden_size, c.num_layers, c.embed_size, c.batch_size = 16, 32, 1, 16, 8
    c.train_steps, c.eval_every, c.log_every, c.checkpoint_every = 20, 10, 5, 10
    c.sample_length = 20
  elif variant:
    raise ValueError(f"config 'chars' has variants '' and 'tiny', got {variant!r}")
  return c
