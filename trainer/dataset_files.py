"""Rows from what Hugging Face `datasets` reads: parquet files, folders written by `save_to_disk`, and hub ids
(where a network is allowed), for `selfplay train --data` and the creator's prompt files.

    rows_from_datasets("prefs.parquet")          # [{"prompt": ..., "chosen": ..., "rejected": ...}, ...]
    rows_from_datasets("saved-dataset/")         # a Dataset, or a DatasetDict's "train" split (or its only one)
    rows_from_datasets("trl-lib/ultrafeedback_binarized")   # a hub id: its train split (not with HF_HUB_OFFLINE)

The `datasets` package is an extra (`pip install 'selfplay[data]'`); without it these sources are refused
with that line. JSON lines (plain or .gz) do not need it (trainer/data.py reads them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class SourceError(ValueError):
    """A data source that cannot be read (the message names it and why)."""


def is_datasets_source(path: str | Path) -> bool:
    """Parquet, a saved dataset folder, or a hub id (OWNER/NAME that is not a local path)."""
    p = Path(path)
    if p.suffix == ".parquet" or (p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json")
                                                  .exists() or (p / "state.json").exists())):
        return True
    text = str(path)  # a hub id: OWNER/NAME, not a path here, not named like a file
    return (not p.exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))
            and p.suffix not in (".json", ".jsonl", ".gz", ".parquet", ".csv", ".txt"))


def rows_from_datasets(path: str | Path, split: str = "train") -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise SourceError(f"{path}: reading parquet, saved dataset folders and hub ids needs the `datasets` package: "
                          "pip install 'selfplay[data]' (or give JSON lines)") from None
    p = Path(path)
    try:
        if p.suffix == ".parquet":
            data = datasets.load_dataset("parquet", data_files=str(p), split="train")
        elif p.is_dir():
            data = datasets.load_from_disk(str(p))
        else:
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
                raise SourceError(f"{path}: not a local file or folder, and HF_HUB_OFFLINE is set: a hub dataset cannot "
                                  "be fetched (save it with save_to_disk, or give a local file)")
            data = datasets.load_dataset(str(path), split=split)
    except SourceError:
        raise
    except Exception as e:  # datasets' own errors name the problem
        raise SourceError(f"{path}: cannot be read as a dataset: {type(e).__name__}: {e}") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data and len(data) != 1:
            raise SourceError(f"{path}: a dataset with splits {', '.join(data)} and no {split!r}: save the split to use")
        data = data[split] if split in data else next(iter(data.values()))
    return [dict(row) for row in data]
