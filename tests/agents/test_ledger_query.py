"""LedgerReader on a real ledger built through agents/ledger.py (SQLite, and a real PostgreSQL server), read while the
hub's writer still holds it."""

import pytest

from agents.ledger import Ledger, open_run_ledger
from agents.ledger_query import Answer, LedgerReader, SampleSpan, TaskRow
from protocol.messages import (
    CreateResult,
    CreateTask,
    GenerateResult,
    GenerateTask,
    JudgedGroup,
    JudgeResult,
    JudgeTask,
    Prompt,
    Sample,
    TrainingReport,
    TrainTask,
    Verdict,
)

E1 = Prompt(prompt_id="e1", text="What is 1 + 1?", source="eval", difficulty=2)
E2 = Prompt(prompt_id="e2", text="What is 12 + 34?", source="eval", difficulty=3)
SEED = Prompt(prompt_id="p1", text="What is 3 + 4?", source="seed", difficulty=2)


def solve_and_judge(ledger: Ledger, answers: list[tuple[Prompt, int, float]], now: float) -> str:
    """A generate task answered at now+1 (one sample per (prompt, policy version, score)), judged at now+2."""
    prompts = list({p.prompt_id: p for p, _, _ in answers}.values())
    [gen] = ledger.submit([GenerateTask(prompts=prompts)], now=now)
    ledger.lease("generate", "solver-0", 1, 30, now=now)
    samples = [Sample(sample_id=f"{gen}.1.{i}", prompt_id=p.prompt_id, text="x", policy_version=v)
               for i, (p, v, _) in enumerate(answers)]
    assert ledger.complete(gen, 1, GenerateResult(samples=samples), now=now + 1) == "accepted"
    groups = [JudgedGroup(prompt=p, samples=[s for s in samples if s.prompt_id == p.prompt_id], verdicts=[])
              for p in prompts]
    [judge] = ledger.submit([JudgeTask(groups=groups)], now=now + 1)
    ledger.lease("judge", "judge-0", 1, 30, now=now + 1)
    verdicts = [Verdict(sample_id=s.sample_id, score=score) for s, (_, _, score) in zip(samples, answers, strict=True)]
    assert ledger.complete(judge, 1, JudgeResult(verdicts=verdicts), now=now + 2) == "accepted"
    return gen


def build_run(ledger: Ledger) -> dict[str, str]:
    """Two evaluated policy versions, an eva round, a training round, a dead task and a queued one; their ids."""
    ids = {"first": solve_and_judge(ledger, [(E1, 0, 1.0), (E2, 0, 0.0), (SEED, 0, 0.5), (SEED, 0, 1.0)], now=0)}
    ledger.record_policy(1, 0, None, 0, now=9)
    # e1 answered again by v0 later (a re-dispatched task): only the first judged answer counts
    ids["second"] = solve_and_judge(ledger, [(E1, 0, 0.0), (E1, 1, 1.0), (E2, 1, 1.0), (SEED, 1, 0.0)], now=10)
    [ids["create"]] = ledger.submit([CreateTask(groups=[], round=1)], now=20)
    ledger.lease("create", "creator-0", 1, 30, now=20)
    evolved = [Prompt(prompt_id=f"x{i}", text=f"What is {i} + 9?", source="evolved", parent_id="p1", mutation=m)
               for i, m in enumerate(("deepen", "deepen", "widen"))]
    ledger.complete(ids["create"], 1, CreateResult(prompts=evolved, round=1), now=21)
    [ids["train"]] = ledger.submit([TrainTask(groups=[], round=1)], now=30)
    ledger.lease("train", "trainer-0", 1, 30, now=31)
    ledger.complete(ids["train"], 1, TrainingReport(policy_version=1, step=3, examples=8), now=35)
    ledger.record_policy(2, 1, None, 0, now=36)
    [ids["dead"]] = ledger.submit([GenerateTask(prompts=[SEED])], now=40)
    ledger.lease("generate", "solver-0", 1, 30, now=40)
    ledger.fail(ids["dead"], 1, "prompt too long", retryable=False, now=41)
    [ids["queued"]] = ledger.submit([GenerateTask(prompts=[SEED])], now=50)
    return ids


@pytest.fixture(params=["sqlite", "postgresql"])
def run(request, tmp_path):
    """(run directory, task ids, the hub's Ledger, still open as beside a running hub: SQLite in WAL mode, or a
    PostgreSQL database the run directory names)."""
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_server").new_database()
    ledger = open_run_ledger(tmp_path, url=url)
    ids = build_run(ledger)
    yield tmp_path, ids, ledger
    ledger.close()


def test_scores_and_rewards_by_policy_version(run):
    run_dir, _, _ = run
    with LedgerReader.for_run(run_dir) as reader:
        assert reader.eval_scores() == {0: {"e1": Answer(2, 1.0), "e2": Answer(3, 0.0)},
                                        1: {"e1": Answer(2, 1.0), "e2": Answer(3, 1.0)}}
        assert reader.reward_by_version() == {0: (0.75, 2), 1: (0.0, 1)}  # training prompts: p1's answers
        rewards = reader.reward_by_version("eval")
        assert rewards[0] == (pytest.approx(1 / 3), 3) and rewards[1] == (1.0, 2)


def test_prompts_policies_and_samples(run):
    run_dir, ids, _ = run
    with LedgerReader.for_run(run_dir) as reader:
        assert reader.prompts_by_source() == {"eval": 2, "evolved": 3, "seed": 1}
        assert reader.evolved_by_mutation() == {"deepen": 2, "widen": 1}
        assert reader.policy_versions() == [1, 2]
        assert reader.sample_span() == SampleSpan(8, 1.0, 11.0) and reader.sample_span().seconds == 10.0
        pairs = reader.sample_tasks()
        assert len(pairs) == 8 and {t for _, t in pairs} == {ids["first"], ids["second"]}
        assert all(sample_id.startswith(f"{task_id}.1.") for sample_id, task_id in pairs)


def test_tasks_their_states_and_results(run):
    run_dir, ids, _ = run
    with LedgerReader.for_run(run_dir) as reader:
        assert reader.tasks_by_state() == {"done": 6, "dead": 1, "queued": 1}
        assert reader.tasks(kind="train") == [TaskRow(ids["train"], "train", "done", 1, None, True, 30.0, 35.0)]
        tasks = reader.tasks()
        assert [t.kind for t in tasks] == ["generate", "judge", "generate", "judge", "create", "train", "generate",
                                           "generate"]  # oldest first
        dead = next(t for t in tasks if t.task_id == ids["dead"])
        assert (dead.state, dead.attempt, dead.reason, dead.has_result) == ("dead", 1, "prompt too long", False)
        assert reader.result(ids["train"]) == TrainingReport(policy_version=1, step=3, examples=8)
        assert [s.policy_version for s in reader.result(ids["second"]).samples] == [0, 1, 1, 1]
        assert reader.result(ids["dead"]) is None and reader.result("no-such-task") is None


def test_an_empty_ledger_reads_as_nothing(tmp_path):
    Ledger(tmp_path / "ledger.sqlite").close()
    with LedgerReader.for_run(tmp_path) as reader:
        assert reader.eval_scores() == {} and reader.reward_by_version() == {} and reader.tasks() == []
        assert reader.sample_span() == SampleSpan(0, None, None) and reader.sample_span().seconds == 0.0
        assert reader.tasks_by_state() == {} and reader.prompts_by_source() == {} and reader.policy_versions() == []


def test_the_reader_cannot_write_and_sees_the_hubs_next_commit(run):
    run_dir, _, ledger = run
    with LedgerReader.for_run(run_dir) as reader:
        with pytest.raises(Exception, match=r"(?i)read.?only"):  # SQLite's mode=ro, PostgreSQL's read-only session
            reader.db.execute("DELETE FROM tasks")
        ledger.record_policy(3, 2, None, 0, now=60)  # the hub commits while the reader is open
        assert reader.policy_versions() == [1, 2, 3]
    assert ledger.queue_stats()["generate"].done == 2  # nothing was deleted


def test_a_directory_without_a_ledger_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no ledger here \(is .* a run directory\?\)"):
        LedgerReader.for_run(tmp_path)
    assert not (tmp_path / "ledger.sqlite").exists()  # and none was created
