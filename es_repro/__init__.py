"""es-repro: evolution strategies for full-parameter LLM fine-tuning (Qiu et al., arXiv 2509.24372)."""
__version__ = "0.1.0"
