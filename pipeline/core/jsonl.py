"""JSON Lines, read one line at a time: ingest's prompts, training files, `prefab eval`'s held-out prompts."""

import json
from pathlib import Path


def json_lines(path: Path):
    """(line number, value, None) for each non-blank line of a JSON Lines file, or (line number, None, what is
    wrong) for a line that is not UTF-8 or not JSON: callers decide whether a bad line stops them."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark is not part of line 1
            except UnicodeDecodeError as e:
                yield number, None, f"invalid UTF-8 at byte {e.start} of the line"
                continue
            if not text.strip():
                continue
            try:
                yield number, json.loads(text), None
            except json.JSONDecodeError as e:
                yield number, None, f"malformed JSON: {e.msg} at column {e.colno}"
