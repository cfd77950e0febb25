"""Log retention: JSON logs rotate past their size and keep a bounded number of old files."""

import json

import structlog

from launch.logs import configure_logging, rotate


def test_json_log_rotates_and_keeps_only_the_backups(tmp_path):
    path = tmp_path / "logs" / "solver-0.jsonl"
    configure_logging("info", json_path=path, max_bytes=2000, backups=2)
    log = structlog.get_logger("test")
    for i in range(200):
        log.info("event", i=i, pad="x" * 50)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["solver-0.jsonl", "solver-0.jsonl.1", "solver-0.jsonl.2"]  # the oldest were dropped
    assert all(p.stat().st_size < 2000 + 200 for p in path.parent.iterdir())
    newest = [json.loads(line)["i"] for line in path.read_text().splitlines()]
    older = [json.loads(line)["i"] for line in (path.parent / "solver-0.jsonl.1").read_text().splitlines()]
    assert newest[-1] == 199 and older[-1] == newest[0] - 1  # nothing lost between the live file and .1
    configure_logging("warning")


def test_rotate_shifts_files(tmp_path):
    path = tmp_path / "x.out"
    for text in ("first", "second", "third"):
        path.write_text(text)
        rotate(path, backups=2)
    assert not path.exists()
    assert (tmp_path / "x.out.1").read_text() == "third" and (tmp_path / "x.out.2").read_text() == "second"
