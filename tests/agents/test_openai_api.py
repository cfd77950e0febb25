"""The LLM judge and eva's evolver over an OpenAI-compatible server: a real HTTP server on loopback serving a
tiny model through the chat-completions API, called with the standard `openai` client."""

import threading
import time

import pytest

from agents.backends.openai_api import ApiError, ApiSettings, OpenAIChat
from agents.backends.scoring import JUDGE_TEMPLATE, LLMJudge
from agents.judge import Judge
from protocol.messages import JudgedGroup, JudgeTask, Prompt, Sample
from tests.agents.openai_server import ChatServer
from tests.agents.test_hub import Running

Q = Prompt(prompt_id="q", text="What is 37 + 48?", answer="85")


def test_the_judge_scores_every_sample_over_the_server(tmp_path, tiny_models):
    r = Running(tmp_path, lease_s=60, heartbeat_interval_s=0.2, liveness=50)
    stop = threading.Event()
    with ChatServer(tiny_models.policy, delay_s=0.2) as server:
        chat = OpenAIChat(ApiSettings(base_url=server.url, model="tiny", concurrency=3))
        try:
            creator, judge_link = r.link("creator-0", "creator"), r.link("judge-0", "judge", ["judge"])
            threading.Thread(target=Judge(judge_link, LLMJudge(chat, max_new_tokens=12)).run, args=(stop,),
                             daemon=True).start()
            texts = ["85", "84", "it is 85", "75", "8 5", "eighty-five"]
            samples = [Sample(sample_id=f"s{i}", prompt_id="q", text=t, policy_version=0) for i, t in enumerate(texts)]
            [task_id] = creator.submit([JudgeTask(groups=[JudgedGroup(prompt=Q, samples=samples, verdicts=[])],
                                                  want_judgment=True)])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and r.task(task_id)["state"] != "done":
                time.sleep(0.05)
            verdicts = r.task(task_id)["result"].verdicts
        finally:
            stop.set()
            r.close()
            chat.close()
        assert [v.sample_id for v in verdicts] == [f"s{i}" for i in range(6)] and server.requests == 6
        assert 1 < server.max_in_flight <= 3  # concurrent, within the setting
        for text, verdict in zip(texts, verdicts, strict=True):  # each judgment is the served model's own reply
            asked = [{"role": "user", "content": JUDGE_TEMPLATE.format(prompt=Q.text, response=text)}]
            assert asked in server.messages
            assert verdict.judgment == (server.reply(asked, 12).strip() or None) and verdict.score == 0.0


def test_a_failing_server_is_retried_and_one_that_is_gone_is_named(tiny_models):
    with ChatServer(tiny_models.policy, fail_first=2) as server:
        chat = OpenAIChat(ApiSettings(base_url=server.url, model="tiny", max_retries=3))
        [reply] = chat.complete(["Rewrite: What is 2 + 2?"], max_tokens=6)
        chat.close()
        assert server.requests == 3 and reply == server.reply([{"role": "user", "content": "Rewrite: What is 2 + 2?"}], 6)
        url = server.url
    gone = OpenAIChat(ApiSettings(base_url=url, model="tiny", max_retries=0, timeout_s=2))
    with pytest.raises(ApiError, match=f"{url} \\(tiny\\): APIConnectionError"):
        gone.complete(["hello"])
    gone.close()


def test_topology_takes_an_api_judge_and_evolver_and_refuses_mixtures(tmp_path):
    from launch.topology import TopologyError, load_topology

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n')
    base = (f'[run]\ndir = "{tmp_path / "run"}"\n[creator]\nprompts = "{seeds}"\n{{creator}}\n[solver]\nmodel = "m"\n'
            '[trainer]\nalgo = "dpo"\nmodel = "m"\n[judge]\nbackend = "llm_judge"\n{judge}\n')
    api = '[{}.api]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "judge"\n'
    path = tmp_path / "t.toml"
    path.write_text(base.format(creator='[creator.evolver]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "big"',
                                judge=api.format("judge")))
    topo = load_topology(path)
    assert topo.judge.api.model == "judge" and topo.creator.evolver.model == "big" and topo.judge.api.concurrency == 8
    path.write_text(base.format(creator="", judge='model = "local"\n' + api.format("judge")))
    with pytest.raises(TopologyError, match=r"model .* or api .*, not both"):
        load_topology(path)
    path.write_text(base.format(creator='mutator = "agents.worlds.arithmetic:mutate"\n[creator.evolver]\n'
                                        'base_url = "http://x/v1"\nmodel = "big"', judge=api.format("judge")))
    with pytest.raises(TopologyError, match=r"mutator .* or evolver .*, not both"):
        load_topology(path)


@pytest.mark.slow
def test_a_run_whose_judge_and_evolver_are_a_server(tmp_path, tiny_models):
    """`selfplay up` with [judge.api] and [creator.evolver] on the local server: the round trains on verdicts
    the served model wrote, from prompts it rewrote."""
    import sqlite3
    import subprocess

    from tests.launch.test_cli import SELFPLAY
    from tests.reliability.run import write_topology

    with ChatServer(tiny_models.policy) as server:
        path = write_topology(tmp_path, tiny_models, rounds=1, prompts=8)
        text = path.read_text()
        api = f'base_url = "{server.url}"\nmodel = "tiny"\n'
        text = text.replace('mutator = "agents.worlds.arithmetic:mutate"\n', f"[creator.evolver]\n{api}")
        text = text.replace(f'backend = "reward_model"\nmodel = "{tiny_models.reward}"',
                            f'backend = "llm_judge"\nmax_new_tokens = 12\n[judge.api]\n{api}')
        path.write_text(text)
        up = subprocess.run([SELFPLAY, "up", str(path)], capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stderr[-3000:]
    asked = [m[0]["content"] for m in server.messages]
    assert any("#Given Prompt#" in a for a in asked)  # eva's rewrites
    judged = [a for a in asked if a.startswith("Judge the response")]
    db = sqlite3.connect(tmp_path / "run" / "ledger.sqlite")
    verdicts = db.execute("SELECT COUNT(*) FROM tasks WHERE kind = 'judge' AND state = 'done'").fetchone()[0]
    db.close()
    assert verdicts >= 1 and len(judged) >= 8
