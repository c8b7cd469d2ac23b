"""What training and evaluation both load besides a checkpoint (pipeline/models/checkpoints.py: its path and
tokenizer): an exported JSONL file as a Dataset."""

from pathlib import Path

from training import formats


def load_data(data: str | Path, method: str):
    from datasets import Dataset  # start-up: datasets

    rows, fmt = formats.read_jsonl(data, method)
    return Dataset.from_list(rows), fmt
