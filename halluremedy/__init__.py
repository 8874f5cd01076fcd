"""halluremedy: fast preference and reflective tuning that cures hallucination in LLaVA-style VLMs."""

__version__ = "0.1.0"
