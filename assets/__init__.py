"""The Dagster code location of clara-pipeline: assets built from clara_pipeline.stages, plus checks and jobs."""
