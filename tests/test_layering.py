"""No module of the package imports upward: layers follow the data.

Layers, each allowed to import only those listed under it (and itself):

* ``errors``, ``prompts``: nothing of the package (one-line errors; the prompt texts every layer shares);
* ``data``: formats and readers (COCO, conversations, preference pairs, reflective records, the scene
  world); ``config`` (YAML + flags) reads files through ``data``;
* ``models``: the LLaVA model, LoRA, packed forwards, decoding; reads ``data``;
* ``eval``: CHAIR, POPE, the evaluation of a model; below it only ``data`` and ``models``;
* ``diagnose``: a model's own hallucinations, measured with ``eval``;
* ``generate``: training data made from annotations and diagnoses (``eval``'s vocabulary, ``diagnose``);
* ``train``: the training loops and objectives, beside ``eval`` / ``diagnose`` / ``generate``, not above
  them: it imports ``data`` and ``models`` only, so a trainer never depends on how it is judged;
* ``pipeline``: the embedded default's data and base model (``config``, ``train``);
* ``recipes``: one function per job (train, evaluate, remedy loop, POVID experiment), any layer below;
* ``cli``: the front door, anything.

A ``__main__`` module is a front door (``python -m halluremedy.data.scenes``) and sits on top too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "halluremedy"
BASE = {"errors", "prompts"}
EVAL = BASE | {"data", "models"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "prompts": set(),
    "data": BASE,
    "config": BASE | {"data"},
    "models": BASE | {"data"},
    "eval": EVAL,
    "diagnose": EVAL | {"eval"},
    "generate": EVAL | {"eval", "diagnose"},
    "train": BASE | {"data", "models"},
    "pipeline": BASE | {"data", "config", "models", "train"},
}
TOP = {"recipes", "cli"}  # may import every layer (not each other's way down: recipes never imports cli)


def layer_of(path: Path) -> str:
    """``halluremedy/train/dpo.py`` -> "train"; ``halluremedy/config.py`` -> "config"."""
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def imported_layers(path: Path) -> set[str]:
    """The package layers ``path`` imports (at module level or inside functions)."""
    return imported_layers_of_source(path.read_text(), path)


def imported_layers_of_source(source: str, path: Path) -> set[str]:
    """The package layers ``source``, the text of module ``path``, imports."""
    out = set()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's own package
                package = path.relative_to(PACKAGE.parent).parts[:-1]              # ("halluremedy", "train")
                base = package[:len(package) - node.level + 1]
                names = [".".join([*base, *([node.module] if node.module else [])])]
            else:
                names = [node.module or ""]
        else:
            continue
        out |= {n.split(".")[1] for n in names if n.startswith("halluremedy.")}
    return out


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py")


def test_every_layer_is_placed():
    layers = {layer_of(p) for p in modules()}
    assert layers <= set(ALLOWED) | TOP, f"place the new layer(s) {sorted(layers - set(ALLOWED) - TOP)} in ALLOWED"


def test_no_module_imports_upward():
    upward = []
    for path in modules():
        layer = layer_of(path)
        if path.name == "__main__.py" or layer == "cli":
            continue
        allowed = set(ALLOWED) | {"recipes"} if layer == "recipes" else ALLOWED[layer] | {layer}
        upward += [f"{path.relative_to(PACKAGE.parent)} ({layer}) imports {bad}"
                   for bad in sorted(imported_layers(path) - allowed)]
    assert not upward, "\n".join(upward)


def test_the_check_sees_imports_in_functions_and_relative_ones():
    source = ("import torch\nfrom . import loop\nfrom ..generate import pairs\n"
              "def f():\n    from halluremedy.eval.run import evaluate\n")
    assert imported_layers_of_source(source, PACKAGE / "train" / "probe.py") == {"train", "generate", "eval"}
