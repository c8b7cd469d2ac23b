"""What a user runs: the `prefab` CLI, `prefab plan` and `prefab check`. The top of pipeline/: nothing in it imports
these."""
