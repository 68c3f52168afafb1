"""clara-pipeline: CLaRa (Continuous Latent Reasoning) compressed RAG as a reproducible pipeline.

The library never imports Dagster: orchestration lives in the top-level ``assets`` package.
"""

__version__ = "0.1.0"
