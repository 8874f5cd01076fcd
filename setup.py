"""halluremedy: a performance-first trainer that cures hallucination in LLaVA-style VLMs.

Two packages are installed from this tree:
  * ``halluremedy``  - data, models, diagnosis, generation, training, evaluation;
  * ``vlm_kernels``  - the standalone Triton ops in ``kernels/`` (it never imports halluremedy).
The ``kernels/`` folder is deliberately *not* installed as ``kernels``: Hugging Face's ``kernels``
distribution owns that import name and transformers probes for it.
"""
from setuptools import find_packages, setup

setup(
    name="halluremedy",
    version="0.1.0",
    description="Fast preference / reflective tuning against VLM hallucination (POVID, DFTG, REVERIE)",
    python_requires=">=3.10",
    packages=find_packages(include=["halluremedy", "halluremedy.*"]) + ["vlm_kernels"],
    package_dir={"vlm_kernels": "kernels"},
    package_data={"halluremedy": ["assets/scene_base/*"]},
    install_requires=[
        # 2.13 is the oldest release we test; CI installs the CPU build first.
        "torch>=2.13,<2.15",
        "triton>=3.4",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "peft>=0.17",
        "diffusers>=0.30",
        "liger-kernel>=0.6",
        "numpy>=1.26",
        "pillow>=10",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pyyaml>=6",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "ruff>=0.5"],
        "gpu": ["flash-attn>=2.6", "xformers>=0.0.28"],
    },
    entry_points={"console_scripts": ["halluremedy=halluremedy.cli:main"]},
)
