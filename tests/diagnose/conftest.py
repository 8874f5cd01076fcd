"""A fake model's probe run over hand-made diagnosis inputs (``helpers``: vocabulary, truth images)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CATS, o, truth

from halluremedy.diagnose import ProbeRun, attribute_probes, existence_probes


@pytest.fixture
def fake_run() -> ProbeRun:
    """Three images; the model hallucinates a moon next to every star, says "yes" to everything,
    calls the red circle blue and counts two circles where there is one."""
    images = [truth(1, o("star"), o("circle", "red")),  # caption: + moon (absent), circle blue (wrong)
              truth(2, o("star"), o("square")),  # caption: + moon, omits square
              truth(3, o("square"))]  # caption: correct
    captions = {1: "a large red star and a large blue circle and a moon.", 2: "a red star and a moon.",
                3: "a red square."}
    short = {1: "a star and two circles.", 2: "a star and a square.", 3: "a square."}
    probes = [p for im in images for p in existence_probes(im, CATS)]
    probes += attribute_probes(images[0], "color", ["blue", "red"], np.random.default_rng(0))
    answers = ["Yes"] * len(probes)
    return ProbeRun(images, CATS, captions, short, probes, answers,
                    attribute_values={"color": ["blue", "green", "red"], "size": ["large", "small"]})
