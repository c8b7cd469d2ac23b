"""`prefab export`: the run's preference pairs as files that trainers accept as they are.

Selection happens once, over polars frames, and every format is written from the same selected rows and
the same train/test split (by prompt, so no prompt is in both); kto unpairs those rows, and grpo takes the run's
prompts that carry a verifier's ground truth, each in its pairs' split. Human labels override the judge: when
annotators preferred the judge's rejected side, the two sides swap. Every line is validated against its
format (training/formats.py) before any file is renamed into place, so a failed export leaves the
previous one untouched.

`selection` picks the pairs and splits them, `tokens` measures them, `rows` builds each format's lines, `card`
writes the dataset card, `hub` saves or pushes Hugging Face datasets, and `stage` runs it all as the export stage.
"""
