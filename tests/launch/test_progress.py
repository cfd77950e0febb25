"""The `up` console's progress lines, from a creator event log that grows, is cut mid-line and rotates."""

import json

from launch.progress import CreatorProgress

TRAINED = {"round": 3, "policy_version": 3, "examples": 2972, "event": "round trained", "level": "info"}
VALIDATED = {"policy_version": 3, "validation": 0.507, "best_version": 1, "below_best_se": 0.81, "tolerance_se": 2.0,
             "event": "validated", "level": "info"}
OTHER = {"event": "hub connected", "level": "info"}


def _line(event):
    return (json.dumps(event) + "\n").encode()


def test_lines_for_round_events_only_as_they_are_written(tmp_path):
    path = tmp_path / "creator-0.jsonl"
    path.write_bytes(_line(TRAINED))  # written before: a continued run's earlier rounds are not shown again
    progress = CreatorProgress(path)
    assert progress.poll() == []
    raw = _line(OTHER) + _line(VALIDATED) + _line(TRAINED)
    with path.open("ab") as f:
        f.write(raw[:-20])  # the writer is mid-line
    assert progress.poll() == ["v3: validation 0.5070 (0.8 se below v1)"]
    with path.open("ab") as f:
        f.write(raw[-20:])
    assert progress.poll() == ["round 3: trained v3 on 2972 examples"]
    path.write_bytes(_line({**VALIDATED, "best_version": 3}))  # rotated: a new, shorter file
    assert progress.poll() == ["v3: validation 0.5070 (best so far)"]
    path.unlink()
    assert progress.poll() == []


def test_rejected_versions_and_failed_rounds_have_lines(tmp_path):
    path = tmp_path / "creator-0.jsonl"
    progress = CreatorProgress(path)
    rejected = {**VALIDATED, "event": "rejected on validation", "below_best_se": 2.6, "tolerance_se": 2.0}
    failed = {"event": "round failed", "round": 4, "failed_in_a_row": 1, "log_level": "error",
              "reason": "round 4: 12 of 32 judge tasks failed: mytask.world:check raised KeyError: 'answer'"}
    path.write_bytes(_line(rejected) + _line(failed))
    assert progress.poll() == [
        "v3: validation 0.5070, 2.6 se below v1 (tolerance 2): rejected, not served",
        "round 4 failed (1 in a row): round 4: 12 of 32 judge tasks failed: mytask.world:check raised KeyError: 'answer'"]
