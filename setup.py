"""halluremedy: a performance-first trainer that cures hallucination in LLaVA-style VLMs.

This distribution is the trainer (data, models, diagnosis, generation, training, evaluation).
Its fused Triton ops are a distribution of their own, ``vlm_kernels``, in ``kernels/`` (its own
pyproject.toml; it never imports halluremedy). ``pip install .`` installs it from that folder.
"""
from pathlib import Path

from setuptools import find_packages, setup

KERNELS = (Path(__file__).resolve().parent / "kernels").as_uri()

setup(
    name="halluremedy",
    version="0.1.0",
    description="Fast preference / reflective tuning against VLM hallucination (POVID, DFTG, REVERIE)",
    python_requires=">=3.10",
    packages=find_packages(include=["halluremedy", "halluremedy.*"]),
    package_data={"halluremedy": ["assets/scene_base/*", "assets/scene_base_llava/*", "assets/scene_tower/*"]},
    install_requires=[
        # 2.13 is the oldest release we test; CI installs the CPU build first.
        "torch>=2.13,<2.15",
        f"vlm_kernels @ {KERNELS}",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "peft>=0.17",
        "numpy>=1.26",
        "pillow>=10",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pyyaml>=6",
    ],
    extras_require={
        # The test suite: diffusers is the oracle the noise schedule is checked against.
        "dev": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "ruff>=0.5", "diffusers>=0.30"],
        # The peers bench/ measures halluremedy against (tests/bench runs their equal-loss checks).
        "bench": ["trl==1.16.0", "liger-kernel>=0.6"],
        "gpu": ["flash-attn>=2.6"],
    },
    entry_points={"console_scripts": ["halluremedy=halluremedy.cli:main"]},
)
