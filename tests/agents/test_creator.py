"""The creator's choice of trainable groups, on a LocalLink (no hub needed for this decision)."""

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
