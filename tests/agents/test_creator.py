"""The creator's choice of trainable groups, on a LocalLink (no hub needed for this decision)."""

import time

import pytest

from agents.creator import Creator, CreatorConfig
from agents.local import LocalLink
from protocol.messages import JudgedGroup, Prompt, Sample, Verdict


def group(i, scores):
    prompt = Prompt(prompt_id=f"p{i}", text=f"What is {i} + 1?", answer=str(i + 1))
    samples = [Sample(sample_id=f"p{i}-{j}", prompt_id=prompt.prompt_id, text="x", policy_version=0)
               for j in range(len(scores))]
    return JudgedGroup(prompt=prompt, samples=samples,
                       verdicts=[Verdict(sample_id=s.sample_id, score=v) for s, v in zip(samples, scores, strict=True)])


GROUPS = [group(0, [1.0, 1.0]), group(1, [1.0, 0.5]), group(2, [0.5, 0.0]), group(3, [0.0, 0.0])]


@pytest.mark.parametrize("algo, floor, kept", [
    ("dpo", None, ["p1", "p2"]),  # a tie gives no pair: it must not take a slot of eva's mix
    ("dpo", 1.0, ["p1"]),  # and with a floor, the best answer must reach it
    ("simpo", None, ["p1", "p2"]),
    ("cut", None, ["p0", "p1", "p2", "p3"]),  # every judged answer teaches CUT, ties included
    ("cut", 1.0, ["p0", "p1"]),
    ("gsil", 1.0, ["p0", "p1", "p2", "p3"]),  # demonstrations: no score is looked at
])
def test_trainable_groups(algo, floor, kept):
    creator = Creator(LocalLink(), CreatorConfig(algo=algo, min_train_score=floor), [])
    assert [g.prompt.prompt_id for g in creator.trainable(GROUPS)] == kept


def test_a_local_link_names_a_missing_worker():
    from protocol.messages import TrainTask

    with pytest.raises(KeyError, match="no local worker for train"):
        LocalLink({"generate": lambda a: None}).submit([TrainTask(groups=[])])


class Workers:
    """Local generate / judge / train workers; the judge lets its tasks die while `dead` says so."""

    def __init__(self, link):
        self.link, self.dead, self.trained = link, lambda: False, []

    def generate(self, assign):
        from protocol.messages import GenerateResult

        samples = [Sample(sample_id=f"{assign.task_id}.{p.prompt_id}.{j}", prompt_id=p.prompt_id, text=str(j),
                          policy_version=0) for p in assign.task.prompts for j in range(2)]
        self.link.complete(assign, GenerateResult(samples=samples))

    def judge(self, assign):
        from protocol.messages import JudgeResult

        if self.dead():
            return self.link.fail(assign, "the checker raised ValueError: no answer", retryable=False)
        verdicts = [Verdict(sample_id=s.sample_id, score=float(s.text)) for g in assign.task.groups for s in g.samples]
        self.link.complete(assign, JudgeResult(verdicts=verdicts))

    def train(self, assign):
        from protocol.messages import TrainingReport

        self.trained.append(assign.task.round)
        self.link.complete(assign, TrainingReport(policy_version=len(self.trained), step=1, examples=1))


def _creator(tmp_path, **settings):
    link = LocalLink()
    workers = Workers(link)
    link.workers = {"generate": workers.generate, "judge": workers.judge, "train": workers.train}
    seeds = [Prompt(prompt_id=f"s{i}", text=f"What is {i} + 1?", answer=str(i + 1)) for i in range(4)]
    validation = [Prompt(prompt_id=f"v{i}", text=f"What is {i} + 2?", answer=str(i + 2)) for i in range(3)]
    config = CreatorConfig(algo="dpo", evolve=False, samples_per_prompt=2, **settings)
    return Creator(link, config, seeds, state_path=tmp_path / "journal.json", validation_prompts=validation), workers


def test_a_round_with_a_dead_task_is_recorded_and_the_next_one_runs(tmp_path):
    creator, workers = _creator(tmp_path, max_failed_rounds=2)
    workers.dead = lambda: creator.round in (2, 4)  # two failures, never two in a row: the run goes on
    creator.run(rounds=5)
    assert workers.trained == [1, 3, 5]
    assert [f["round"] for f in creator.failures] == [2, 4] and "the checker raised" in creator.failures[0]["reason"]
    resumed, _ = _creator(tmp_path)  # the journal keeps them
    assert resumed.failures == creator.failures


def test_a_failed_round_stops_the_run_when_asked_or_after_too_many(tmp_path):
    from agents.creator import RunStopped

    creator, workers = _creator(tmp_path / "a", on_failed_round="stop")
    workers.dead = lambda: creator.round == 2
    with pytest.raises(RunStopped, match="round 2"):
        creator.run(rounds=3)
    assert workers.trained == [1]
    creator, workers = _creator(tmp_path / "b", max_failed_rounds=2)
    workers.dead = lambda: True
    with pytest.raises(RunStopped, match=r"2 failed round\(s\) in a row"):
        creator.run(rounds=5)
    assert workers.trained == [] and creator.round == 2  # not spinning through all five


def test_a_restarted_creator_keeps_counting_the_runs_wall_time(tmp_path):
    """max_wall_s bounds the run, not each incarnation: the journal carries the seconds spent."""
    first, _ = _creator(tmp_path, max_wall_s=3600)
    first.run(rounds=1)
    first._started = time.monotonic() - 3600.5  # as if the first hour had been spent
    first._save()
    second, workers = _creator(tmp_path, max_wall_s=3600)
    assert second.elapsed_s >= 3600.5
    second.run(rounds=5)
    assert second.round == 1 and workers.trained == []  # past the limit: no round started


@pytest.mark.parametrize("metric, mean", [("mean", 2 / 3), ("solved", 1 / 3)])
def test_promotion_compares_the_mean_score_or_the_share_solved(tmp_path, metric, mean):
    creator, _ = _creator(tmp_path, promotion=True, promotion_metric=metric)
    creator.greedy_scores = lambda prompts: [0.5, 0.5, 1.0]  # graded verdicts: two half right, one right
    assert creator.promote() is False
    assert creator.promotion.validation[0].mean == pytest.approx(mean)


@pytest.mark.parametrize("prompts, most, sizes", [
    (7, 3, [2, 2, 3]),  # three tasks either way, but no solver is left with a task of 1 while another does 3
    (6, 3, [3, 3]),
    (2, 3, [2]),
])
def test_a_rounds_prompts_go_out_in_tasks_of_equal_size(tmp_path, prompts, most, sizes):
    creator, workers = _creator(tmp_path, prompts_per_task=most)
    submitted = []
    generate = workers.generate
    creator.link.workers["generate"] = lambda assign: (submitted.append(len(assign.task.prompts)), generate(assign))
    ask = [Prompt(prompt_id=f"q{i}", text=f"What is {i} + 3?", answer=str(i + 3)) for i in range(prompts)]
    groups = creator.solve(ask)
    assert sorted(submitted) == sizes
    assert [g.prompt.prompt_id for g in groups] == [p.prompt_id for p in ask]  # in order, none lost
