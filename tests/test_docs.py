"""The documentation builds in strict mode and its API pages hold the documented names.

Reference: mkdocs itself. ``--strict`` turns every warning into an error: a cross-reference
to an object that does not exist, a broken link or anchor between pages, a docstring
griffe cannot parse. The docs tools are test requirements, so a missing mkdocs fails here
rather than skipping.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Page -> names that must appear in it (headings and anchors are rendered from the code).
EXPECTED = {
  "api/cells/index.html": [
    "recurrent.cell.Cell",
    "recurrent.cell.FastPath",
    "LSTMParams",
    "LSTMState",
    "GRUParams",
    "ResetBeforeGRUParams",
    "lstm",
    "recurrent.layer_norm_lstm.layer_norm_lstm",
    "recurrent.projection_lstm.projection_lstm",
  ],
  "api/regularisers/index.html": ["recurrent.zoneout.zoneout", "recurrent.weight_drop.weight_drop"],
  "api/scan/index.html": [
    "recurrent.scan",
    "recurrent.scan.trace",
    "recurrent.fused",
    "recurrent.options.Options",
    "recurrent.fused.policy.chunk_rule",
  ],
  "cells/index.html": ["FastPath", "elman", "sums_only"],
  "api/linen/index.html": [
    "recurrent.linen.RNN",
    "recurrent.linen.LSTM",
    "recurrent.linen.GRUCell",
  ],
  "api/nnx/index.html": ["recurrent.nnx.RNN", "recurrent.nnx.LSTM", "recurrent.nnx.GRUCell"],
  "api/layers/index.html": ["recurrent.layers.stack", "recurrent.layers.bidirectional_scan"],
  "api/dropout/index.html": ["recurrent.dropout.sequence_keys", "recurrent.dropout.mc_average"],
  "api/convert/index.html": ["recurrent.convert.from_torch", "recurrent.convert.to_flax"],
  "api/train/loop/index.html": ["recurrent.train.loop.train_and_evaluate"],
  "api/train/config/index.html": [
    "recurrent.train.config.base_config",
    "recurrent.train.config.fields",
    "recurrent.train.configs.get_config",
  ],
  "api/train/models/index.html": ["recurrent.train.models.SequenceModel"],
  "design/index.html": ["1512.05287", "fold_in", "Glossary"],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
  site_dir = tmp_path_factory.mktemp("site")
  result = subprocess.run(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    timeout=300,
  )
  assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-5000:]}"
  return site_dir


@pytest.mark.parametrize("page", sorted(EXPECTED))
def test_page_holds_documented_names(site, page):
  text = (site / page).read_text(encoding="utf-8")
  missing = [name for name in EXPECTED[page] if name not in text]
  assert not missing, f"{page} lacks {missing}"


def test_doctests_render_as_code_and_roles_as_links(site):
  text = (site / "api/scan/index.html").read_text(encoding="utf-8")
  assert ":func:" not in text and ":class:" not in text
  assert 'href="../dropout/#recurrent.dropout.sequence_keys"' in text
  assert '<span class="gp">&gt;&gt;&gt; </span>' in text
