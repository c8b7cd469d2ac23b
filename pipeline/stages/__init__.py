"""The pipeline's stages, each registered under the `prefab.stages` entry point: ingest to report. They use
pipeline.core, pipeline.models and pipeline.sandbox, and each other only where one stage builds on another's tables."""
