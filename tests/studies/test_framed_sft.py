"""The methods table's SFT start reads judgments and negatives as the arms mean them: a judgment (or its verdict) of an
answer to the row's own problem precedes that answer (CUT's frame: the response that received the judgment), and a
contrastive negative is a wrong worked answer to the same problem, followed by the right one."""

import json
import random
import re

from agents.worlds import arithmetic as world
from studies.methods_table.world import framed_sft
from trainer.methods.contrastive import ContrastiveSettings
from trainer.methods.cut import CUTSettings


def test_framed_rows_carry_their_own_problems_judgment_or_negative(tmp_path):
    problems = world.problems(400, (2, 3), random.Random(0))
    plain = tmp_path / "sft.jsonl"
    plain.write_text("".join(json.dumps({"prompt": p.text, "completion": p.solution()}) + "\n" for p in problems))
    rows = [json.loads(line) for line in framed_sft(plain, tmp_path / "framed.jsonl", 0.5, random.Random(1))
            .read_text().splitlines()]
    cut_head = CUTSettings().template.split("{prompt}")[1].split("{judgment}")[0]
    negative_head = ContrastiveSettings().template.split("{negative}")[0].split("{question}")[1]
    judged = named = negatives = 0
    wrong_answers = 0
    for p, row in zip(problems, rows, strict=True):
        if row["prompt"] != p.text:  # framed: the question inside one of the arms' two frames
            assert p.text in row["prompt"]
            assert "Judgment: " in row["prompt"] or row["prompt"].startswith("Instruction: ")
        if cut_head in row["prompt"]:
            judged += 1
            judgment = row["prompt"].split(cut_head)[1]
            given = row["completion"].rsplit(" ", 1)[1]  # the judged answer follows its judgment
            assert row["completion"] == p.solution(int(given))
            assert world.grade(p.prompt("x"), given)[1].startswith(judgment.split(":")[0].split(".")[0])
            wrong_answers += given != str(p.value)
            stated = re.search(r" is (\d+)[,.]", judgment)
            if stated:  # a whole judgment: it states this problem's result, and the wrong one given
                named += 1
                assert p.expression in judgment and stated.group(1) == str(p.value)
                assert given == str(p.value) or f"not {given}." in judgment
            continue
        assert row["completion"] == p.solution()  # elsewhere the right worked answer
        if negative_head in row["prompt"] and "Negative answer: \n" not in row["prompt"]:
            negative = row["prompt"].split("Negative answer: ")[1].split("\n")[0]
            if negative:
                negatives += 1
                assert negative != p.solution() and negative.rsplit(" ", 1)[0] == p.solution().rsplit(" ", 1)[0]
    assert judged > 50 and named > 20 and negatives > 20 and 0.6 < wrong_answers / judged < 0.9
    framed = sum(p.text != row["prompt"] for p, row in zip(problems, rows, strict=True))
    assert 150 < framed < 250  # about half of the rows are framed
