"""The exported files as Hugging Face datasets, one per file stem with its splits: saved to disk or pushed to the
Hub."""

from pathlib import Path


def _datasets(files: dict) -> dict:
    """stem -> DatasetDict of its splits."""
    from datasets import Dataset, DatasetDict  # start-up: datasets

    out: dict = {}
    for name, (rows, _) in files.items():
        stem, split = name.removesuffix(".jsonl").rsplit("_", 1)
        out.setdefault(stem, DatasetDict())[split] = Dataset.from_list(rows)
    return out


def save_datasets(files: dict, target: Path) -> str:
    for stem, dataset in _datasets(files).items():
        dataset.save_to_disk(str(target / stem))
    return str(target)


def push_datasets(files: dict, repo: str) -> str:
    for stem, dataset in _datasets(files).items():
        dataset.push_to_hub(repo, config_name=stem)
    return repo
