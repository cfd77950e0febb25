"""Shared fixtures. Nothing is downloaded: the hub is switched off for every test."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A locally built tokenizer, tiny Llama causal LM and reward model, saved once per session."""
    from trainer.tiny import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)
