"""What an arm of the methods table runs with: its budget, data, seed and directory, and the helpers every arm
shares (a fresh policy, exactly K examples a round, a held-out evaluation after each round).

Its own module so that arms.py (the table of arms) and creator_arm.py (the eva and static arms) both import it
and neither imports the other back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studies.methods_table.policy import Frames, Policy, exact, plain
from studies.methods_table.world import Budget, Data


@dataclass
class Context:
    budget: Budget
    data: Data
    seed: int
    out: Path  # this arm and seed's directory
    lr: float  # this run's point of the arm's learning-rate grid
    pairs_file: Path | None = None  # the seed's offline pairs (pair arms)
    current: Policy | None = None  # the arm's policy, closed by run_arm
    frames: Frames = plain  # how the arm asks at test time (its last round's), for the validation set too

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def k(self) -> int:
        return self.budget.examples_per_round

    def policy(self, algo: str, **settings: Any) -> Policy:
        self.current = Policy(self.budget, self.data.model, self.out / "train", self.seed, algo, lr=self.lr, **settings)
        return self.current

    def fit(self, policy: Policy, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Exactly K rows: a random K of them, or all of them repeated in shuffled order when short."""
        if len(rows) >= self.k:
            return self.rng.sample(rows, self.k)
        if rows:
            policy.record.notes["short_rounds"] = policy.record.notes.get("short_rounds", 0) + 1
        out: list[dict[str, Any]] = []
        while rows and len(out) < self.k:
            out += self.rng.sample(rows, len(rows))
        return out[:self.k]

    def round_done(self, policy: Policy, frames: Frames = plain) -> None:
        self.frames = frames
        policy.record.scores = policy.evaluate(self.data.held_out, frames)
        policy.record.by_round.append(exact(policy.record.scores))
