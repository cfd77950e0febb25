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


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server for the session (tests/pgserver.py); skipped, saying why, where none can run."""
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the postgres extra; make install-dev has it)")
    from tests.pgserver import PgServer

    if PgServer.find() is None:
        pytest.skip("no PostgreSQL server binaries: apt install postgresql (make install-dev does it where apt can)")
    server = PgServer()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_where(request, tmp_path):
    """Where a ledger test's ledger lives: a SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "ledger.sqlite"
    return request.getfixturevalue("pg_server").new_database()
