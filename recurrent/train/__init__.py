"""Training: loop, tasks and data, checkpoints and the command line."""
