"""The data of the task wina_tiny_mc, read beside this file (so lm-eval runs it from any folder)."""

from __future__ import annotations

from pathlib import Path


def load(**_options):
    """lm-eval's custom_dataset hook: the six questions as a DatasetDict with a "test" split."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_json(str(Path(__file__).with_suffix(".jsonl")))})
