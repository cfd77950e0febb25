"""bench/loop.py's yardstick for overlap: the synchronous run's rounds with each round's training beside
the next round's generation."""

import runpy
from pathlib import Path

pipelined = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "loop.py"), run_name="not_main")["pipelined"]


def test_balanced_rounds_hide_all_training_but_the_last():
    # started at 0: generation 1 s, training 1 s, three times; the creator's last collect 0.1 s
    assert pipelined([(1, 2), (3, 4), (5, 6)], 0.0, 6.1) == 1 + 1 + 1 + 1 + 0.1


def test_the_longer_of_training_and_the_next_generation_counts():
    # generations of 1, 3 and 0.5 s; trainings of 2, 1 and 1 s (the clock starts at 100)
    trains = [(101, 103), (106, 107), (107.5, 108.5)]
    assert pipelined(trains, 100.0, 8.5) == 1 + max(2, 3) + max(1, 0.5) + 1
