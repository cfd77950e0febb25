"""Checkpoint names: a second checkpoint at the same step (the live trainer's rollback trains no step) comes after
every checkpoint of that step, pruned ones included, and pinned ones outlive `keep`."""

import shutil

import torch
from torch import nn

from trainer.checkpoint import Cursor, checkpoints, latest_checkpoint, save_checkpoint


class Tok:
    def save_pretrained(self, path):
        pass


def save(root, step, *, keep=10, new=True, pinned=()):
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model.save_pretrained = lambda path: path.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(root, model, Tok(), optimizer, scheduler, Cursor(step=step), {}, keep, new=new,
                           pinned=pinned)


def test_checkpoints_of_one_step_are_numbered_after_every_earlier_one(tmp_path):
    names = [save(tmp_path, step).name for step in (9, 10, 10, 10, 11)]
    assert names == ["step-000009", "step-000010", "step-000010.001", "step-000010.002", "step-000011"]
    assert [p.name for p in checkpoints(tmp_path)] == names
    shutil.rmtree(tmp_path / "step-000010")  # pruned: its name is not taken again
    assert save(tmp_path, 10).name == "step-000010.003"
    shutil.rmtree(tmp_path / "step-000011")
    assert latest_checkpoint(tmp_path).name == "step-000010.003"


def test_steps_past_a_million_still_sort_by_step(tmp_path):
    save(tmp_path, 999_999)
    save(tmp_path, 1_000_000)
    assert latest_checkpoint(tmp_path).name == "step-1000000"


def test_pinned_checkpoints_outlive_keep_and_the_new_one_is_never_pruned(tmp_path):
    pinned = save(tmp_path, 1).name
    for step in (2, 3, 4):
        save(tmp_path, step, keep=1, pinned=[pinned])
    assert [p.name for p in checkpoints(tmp_path)] == [pinned, "step-000004"]
