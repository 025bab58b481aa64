"""Test-session settings (also for the doctests in recurrent/): strict numerics, as in
equinox's test suite, so silent dtype or rank promotion in the library fails a test."""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
