"""Where issue 3's CPU targets stand across saved ``lstm_cpu.py`` runs.

Reads the JSON files ``lstm_cpu.py --json`` wrote (by default every full or partial run on
the Zen 4 host, ``results/lstm_cpu_*_run*_zen4.json``, less the runs under a changed malloc,
``*nommap*`` and ``*hugetlb*``) and prints one markdown row per shape, cell and mode: for
each target the range of the ratio over the runs that have the row and in how many of
them it was met, and PyTorch's time over Flax's, what the fastest other implementation
reaches against the Flax target. The targets: ``recurrent`` at most 1.0x PyTorch's time
and 0.75x Flax's (``OptimizedLSTMCell`` for the LSTM, ``GRUCell`` for the GRU), dropout at
most 1.15x the call without, and a compile time no longer than Flax's::

    python benchmarks/target_status.py [FILE.json ...]
"""

import argparse
import glob
import json
import os
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_GLOB = os.path.join(RESULTS, "lstm_cpu_*_run*_zen4.json")

# The targets, as shares: recurrent's time over PyTorch's and over Flax's, and its
# time with both dropouts over its time without (lstm_cpu.py's "GFLOP/s the targets need"
# uses the first two).
TARGET_VS_TORCH = 1.0
TARGET_VS_FLAX = 0.75
TARGET_DROPOUT = 1.15


def default_files() -> list:
  files = sorted(glob.glob(DEFAULT_GLOB))
  return [f for f in files if "nommap" not in f and "hugetlb" not in f]


def ratios(row: dict) -> dict:
  """The row's target ratios, from the ``ratios`` ``lstm_cpu.py`` saved with it (Flax: its
  reference, ``OptimizedLSTMCell`` for the LSTM), PyTorch/Flax from those two, and compile
  seconds rec - Flax; each where the row has it."""
  saved, comp = row["ratios"], row.get("compile_s", {})
  flax = "flax-opt" if "recurrent/flax-opt" in saved else "flax"
  out = {
    name: saved[key]
    for name, key in (
      ("rec/PyTorch", "recurrent/torch"),
      ("rec/Flax", f"recurrent/{flax}"),
      ("dropout", "dropout/no-dropout"),
    )
    if key in saved
  }
  if "rec/PyTorch" in out and "rec/Flax" in out:
    out["PyTorch/Flax"] = out["rec/Flax"] / out["rec/PyTorch"]
  if "recurrent" in comp and flax in comp:
    out["compile"] = comp["recurrent"] - comp[flax]
  return out


def collect(files) -> dict:
  """``{(shape, cell, mode): {ratio name: [values, one per run]}}``, in the files' order."""
  table = {}
  for path in files:
    with open(path) as f:
      for row in json.load(f)["rows"]:
        key = (",".join(map(str, row["shape"])), row["cell"], row["mode"])
        for name, value in ratios(row).items():
          table.setdefault(key, {}).setdefault(name, []).append(value)
  return table


def cell(values, bound=None, fmt="{:.2f}") -> str:
  """``lo-hi (met/runs)``, or without the count where there is no bound."""
  if not values:
    return "–"
  lo, hi = min(values), max(values)
  text = fmt.format(lo) if lo == hi else f"{fmt.format(lo)} to {fmt.format(hi)}"
  if bound is None:
    return text
  return f"{text} ({sum(v <= bound for v in values)}/{len(values)})"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("files", nargs="*", help="lstm_cpu.py JSON files (default: see above)")
  args = parser.parse_args(argv)
  files = args.files or default_files()
  if not files:
    raise SystemExit(f"no lstm_cpu.py JSON files given or found at {DEFAULT_GLOB}")
  print(f"{len(files)} runs: " + ", ".join(os.path.basename(f) for f in files) + "\n")
  print("Ranges over the runs; in brackets, in how many the target was met. compile: "
        "recurrent's trace + compile seconds minus Flax's (met at 0 or below).\n")  # fmt: skip
  bounds = {"rec/PyTorch": TARGET_VS_TORCH, "rec/Flax": TARGET_VS_FLAX, "dropout": TARGET_DROPOUT}
  names = list(bounds) + ["PyTorch/Flax", "compile"]
  print("| B,T,I,H | cell | mode | " + " | ".join(names) + " |")
  print("| --- " * (len(names) + 3) + "|")
  for (shape, cell_name, mode), values in collect(files).items():
    cells = [cell(values.get(n, []), bound) for n, bound in bounds.items()]
    cells.append(cell(values.get("PyTorch/Flax", [])))
    cells.append(cell(values.get("compile", []), 0.0, "{:+.2f}"))
    print(f"| {shape} | {cell_name.upper()} | {mode} | " + " | ".join(cells) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
