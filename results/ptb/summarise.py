"""The Penn Treebank results table and the ablation's curves, from the committed runs.

    python results/ptb/summarise.py  # prints the markdown table, draws docs/images/ptb_ablation.png

Reads each ``results/ptb/<run>/{config.json,metrics.jsonl}``; nothing is typed in. Also
redraws each run's ``curves.png`` with :func:`recurrent.train.records.plot`.
"""

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

HERE = pathlib.Path(__file__).parent
ABLATION = {
  "zaremba_small": "(a) no dropout",
  "small_naive": "(b) naive, per step",
  "small_tied": "(c) time-invariant, tied",
  "small_untied": "(d) time-invariant, untied + words",
}


def load(run: str):
  folder = HERE / run
  config = json.loads((folder / "config.json").read_text())
  records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
  return config, records


def last(records, split):
  found = [r for r in records if r["split"] == split]
  return found[-1]["perplexity"] if found else None


def dropout_of(config) -> str:
  if not any(config[k] for k in ("dropout", "recurrent_dropout", "output_dropout")):
    return "none"
  parts = [f"in {config['dropout']:g}", f"out {config['output_dropout']:g}"]
  if config["recurrent_dropout"]:
    parts.append(f"h {config['recurrent_dropout']:g}")
  if config["embed_dropout"]:
    parts.append(f"words {config['embed_dropout']:g}")
  kind = "naive" if config["dropout_kind"] == "naive" else "variational"
  if config.get("untied_masks"):
    kind += ", untied"
  return f"{kind}: " + ", ".join(parts)


def table() -> str:
  rows = [
    "| run | dropout | valid | test | valid, MC | test, MC | best valid (epoch) |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  fmt = lambda x: "–" if x is None else f"{x:.1f}"  # noqa: E731
  for run in sorted(p.name for p in HERE.iterdir() if (p / "metrics.jsonl").exists()):
    config, records = load(run)
    evals = [r for r in records if r["split"] == "eval"]
    steps_per_epoch = max(r["step"] for r in records) / config["epochs"]
    best = min(evals, key=lambda r: r["perplexity"])
    mc = config["mc_samples"]
    rows.append(
      f"| `{run}` | {dropout_of(config)} | {fmt(last(records, 'eval'))} |"
      f" {fmt(last(records, 'test'))} | {fmt(last(records, 'eval_mc'))} |"
      f" {fmt(last(records, 'test_mc'))}{f' ({mc})' if mc else ''} |"
      f" {best['perplexity']:.1f} ({best['step'] / steps_per_epoch:.1f}) |"
    )
  return "\n".join(rows)


def plot_ablation(path):
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for (run, label), color in zip(ABLATION.items(), ["C0", "C1", "C2", "C3"]):
    if not (HERE / run / "metrics.jsonl").exists():
      continue
    config, records = load(run)
    steps_per_epoch = max(r["step"] for r in records) / config["epochs"]
    for ax, split in zip(axes, ("train", "eval")):
      points = [
        (r["step"] / steps_per_epoch, r["perplexity"]) for r in records if r["split"] == split
      ]
      ax.plot(*zip(*points), color=color, label=label, marker="o" if split == "eval" else None,
              markersize=3, linewidth=1 if split == "train" else 1.8)  # fmt: skip
  for ax, title in zip(axes, ("training (dropout on)", "validation (dropout off)")):
    ax.set(title=title, xlabel="epoch", yscale="log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
    ax.grid(alpha=0.3, which="both")
  axes[0].set(ylabel="perplexity", ylim=(40, 400))
  axes[1].axhline(120.7, color="gray", linestyle=":", label="Zaremba et al., small: 120.7")
  axes[1].legend(fontsize=8)
  fig.suptitle("Penn Treebank, 2 x 200 LSTM, 13 epochs: the same code with four kinds of dropout")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def redraw_curves():
  import ml_collections

  from recurrent.train import config as config_lib
  from recurrent.train import records

  for folder in sorted(p for p in HERE.iterdir() if (p / "metrics.jsonl").exists()):
    saved, log = load(folder.name)
    config = config_lib.base_config()
    config.update({k: v for k, v in saved.items() if k in config})
    records.plot(log, folder / "curves.png", "perplexity", ml_collections.ConfigDict(config))


if __name__ == "__main__":
  redraw_curves()
  print(table())
  plot_ablation(HERE.parents[1] / "docs" / "images" / "ptb_ablation.png")
