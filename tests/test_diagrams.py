"""The diagram scripts ``images/make_*.py`` run and draw what they should.

Each script runs as a user runs it (``python images/make_x.py``, here from a temporary folder)
with ``--out`` pointing into that folder, so the committed SVGs are never touched. The SVG is
checked for being well formed and for a few of its labels, not byte for byte: newer matplotlib
releases (which CI installs) may write the same drawing differently.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "images").glob("make_*.py"))

# A few labels each diagram must show. make_forward_process.py draws its text as outlines;
# matplotlib keeps the text as a comment next to each outline, which is what is found there.
LABELS = {
    "make_clip_text_encoder.py": ["tokenizer", "final_layer_norm", "prompt_embeds"],
    "make_cross_attention.py": ["Q = to_q(x)", "out = to_out(A V)", 'column j: "circle"'],
    "make_forward_process.py": ["+ noise", "reverse: the UNet learns to undo the noise"],
    "make_pipeline.py": ["1 · text understander", "VAE decoder", "noise_pred"],
    "make_training_step.py": ["caption dropout", "VAE encoder", "ε: the target"],
    "make_unet.py": ["conv_in → 320 ch", "down_blocks.0  CrossAttnDownBlock2D", "mid_block  UNetMidBlock2DCrossAttn"],
}


def test_every_script_is_checked():
    assert SCRIPTS, "no images/make_*.py found"
    assert {s.name for s in SCRIPTS} == set(LABELS), "add the new diagram's labels to LABELS"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_writes_svg(script, tmp_path):
    out = tmp_path / "diagram.svg"
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(script), "--out", str(out)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and out.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["diagram.svg"]  # raster images are inside the SVG

    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    root = ET.fromstring(out.read_text(encoding="utf-8"), parser=parser)
    assert root.tag.endswith("svg")
    strings = [el.text or "" for el in root.iter()]  # text elements, and comments (ET.Comment nodes)
    found = "\n".join(strings)
    for label in LABELS[script.name]:
        assert label in found, f"{label!r} not in {script.name}'s SVG"
