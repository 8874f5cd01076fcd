"""Packaging: ``vlm_kernels`` is a distribution of its own, and this checkout never shadows ``kernels``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_import_kernels_from_the_root_is_not_this_project():
    """``python -c`` puts the working directory first on sys.path: from the root, ``kernels`` must
    still be Hugging Face's distribution (which transformers imports), never the ``kernels/`` folder."""
    origin = _python("import kernels; print(kernels.__spec__.origin)", cwd=ROOT).strip()
    assert origin not in ("None", "") and not Path(origin).resolve().is_relative_to(ROOT / "kernels"), origin
    _python("import transformers.activations", cwd=ROOT)  # imports kernels' CUDAProperties


def test_kernels_folder_is_no_package():
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert (ROOT / "kernels" / "vlm_kernels" / "__init__.py").exists()


def test_vlm_kernels_never_imports_halluremedy(tmp_path: Path):
    code = ("import sys, vlm_kernels; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('halluremedy', 'kernels')))")
    assert _python(code, cwd=tmp_path).strip() == "[]"


def test_vlm_kernels_wheel_holds_only_vlm_kernels(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(ROOT / "kernels")], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vlm_kernels-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"vlm_kernels", wheel.name.split("-py")[0] + ".dist-info"}, tops
    requires = sorted(line.split(":", 1)[1].strip().split(">")[0].split("=")[0].split("<")[0]
                      for line in metadata.splitlines() if line.startswith("Requires-Dist:"))
    assert requires == ["torch", "triton"], requires
