"""``load_script(name)``: import ``scripts/NAME.py`` as a module (the recipes are scripts, not a package)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def load_script():
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[name]
        return module

    return load
