"""The framework every other part stands on: config, errors, the registry, the runner, the run directory (store,
schema), the call cache, progress. It imports nothing else of prefab."""
