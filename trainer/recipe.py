"""The training recipe: one readable loop for every method (torchtune-style setup / train / save / cleanup).

    selfplay train --algo dpo --data pairs.jsonl --model ./tiny --out runs/dpo

    recipe = Recipe(load_config(algo="dpo", data="pairs.jsonl", model="./tiny", out="runs/dpo"))
    recipe.setup(); recipe.train(); recipe.cleanup()

Per optimizer step: for each micro-batch, forward (both sides of a pair in one pass) -> the method's
loss -> backward; then clip, step, schedule, log, and every `save_every` steps a checkpoint that
resumes exactly. Methods differ only in their examples and step function, which the registry
(`trainer.methods`) gives.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer import distributed
from trainer.checkpoint import (
    Cursor,
    export_final,
    latest_checkpoint,
    load_checkpoint,
    read_extra,
    read_extra_state,
    save_checkpoint,
)
from trainer.config import TrainConfig
from trainer.data import Batch, DataError, Example, Renderer, collate, plan_batches, read_rows, split_messages
from trainer.generate import sample_responses
from trainer.logps import SeqLogps, reference_logps, sequence_logps
from trainer.methods import SUPERVISED, build_examples, check_rows, get_method
from trainer.methods.losses import LossOutput
from trainer.outdir import prepare_out, trim_metrics

log = structlog.get_logger("trainer.recipe")


class Recipe:
    def __init__(self, config: TrainConfig, resume: bool = False, rows: list[dict] | None = None,
                 collective_timeout_s: float = 1800.0) -> None:
        """`rows` instead of reading `config.data`: the live trainer starts with none and adds rounds.
        `collective_timeout_s`: how long a rank waits for the others in a collective (several ranks only; the live
        trainer's followers wait for rank 0's next round)."""
        self.config, self.resume, self.rows = config, resume, rows
        self.out = Path(config.out)
        self.method = get_method(config.algo)
        # (example index, role, "reference" | "proximal") -> (sum of the response's log-probs, per token)
        self.logp_cache: dict[tuple[int, str, str], tuple[float, torch.Tensor]] = {}
        self.step_seconds: list[float] = []  # wall time of each optimizer step (benchmarks read it)
        self._plans: dict[int, list[list[int]]] = {}
        self._replay_plan: tuple[int, list[list[int]]] = (-1, [])  # (epoch, batches) of config.replay's rows
        # the steps the warmup and decay span when rounds arrive one at a time (train_round) and their total is
        # planned ahead (the methods table); None: the schedule spans this run's own total steps
        self.schedule_steps: int | None = None
        self.stop_requested = False  # set by run's Ctrl-C handler: train stops after the current step
        self.world = distributed.world_from_env()  # the ranks torchrun started, or one process
        self.collective_timeout_s = collective_timeout_s
        self._adapter_params: dict[str, torch.nn.Parameter] | None = None
        self._passed: list[tuple[Batch, SeqLogps]] = []  # (batch, its log-probs) of the forward in _one_pass

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.config
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        world = self.world
        self.device = distributed.device_for(world, cfg.device)
        distributed.start(world, self.device, self.collective_timeout_s)
        gpu_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and gpu_bf16)
        frozen_dtype = torch.bfloat16 if cfg.base_dtype == "bf16" or (cfg.base_dtype == "auto" and gpu_bf16) \
            else torch.float32
        rows = read_rows(cfg.data) if self.rows is None else self.rows  # a bad file is named before the model loads
        check_rows(rows, cfg.algo, source=cfg.data)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # LoRA trains beside frozen weights (their dtype: base_dtype); full fine-tuning trains fp32 weights
        self.model = AutoModelForCausalLM.from_pretrained(
            cfg.model, dtype=frozen_dtype if cfg.finetune == "lora" else torch.float32).to(self.device)
        if cfg.activation_checkpointing:  # transformers 5's name, or 4's
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.frozen_reference = None
        if cfg.finetune == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                              target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
            self.model = get_peft_model(self.model, lora)  # the adapter's weights are fp32 whatever the base's
        elif self.method.reference(cfg) and cfg.reference == "initial":
            self.frozen_reference = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=frozen_dtype).to(
                self.device).eval()
            self.frozen_reference.requires_grad_(False)
        self.model.train()

        self.renderer = renderer = Renderer(self.tokenizer, cfg.max_length, cfg.max_prompt_length)
        if self.method.samples_own_answers and rows and not all("generated" in row for row in rows):
            generated = self._generated_answers(rows, renderer)
            rows = [{**row, "generated": generated[i]} for i, row in enumerate(rows)]
        if world.sharded:
            bf16_compute = self.autocast_bf16 and self.device.type == "cuda"
            distributed.shard(self.model, bf16_compute=bf16_compute)
            if self.frozen_reference is not None:
                distributed.shard(self.frozen_reference, bf16_compute=bf16_compute)
        self.examples = build_examples(rows, cfg, renderer)
        self.replay = self._replay_examples()
        batches_per_epoch = math.ceil(len(self.examples) / cfg.batch_size)
        self.total_steps = cfg.max_steps or cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum)

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.cursor, self.resumed_extra = Cursor(), {}
        checkpoint = latest_checkpoint(self.out / "checkpoints") if self.resume else None
        if checkpoint is not None:
            self.cursor = load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler)
            self.resumed_extra = read_extra(checkpoint)
            # the round-start log-probs the run clips against: those of its start, not of the resumed weights
            self.logp_cache.update(read_extra_state(checkpoint).get("proximal", {}))
            log.info("resumed", checkpoint=str(checkpoint), step=self.cursor.step)
        elif self.resume:
            log.warning("no checkpoint to resume from; starting fresh", out=str(self.out))
        self.metrics_file, self.tb = None, None  # rank 0 writes them
        if world.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.resume:  # the steps after the checkpoint are trained again: logged once, not twice
                trim_metrics(self.out / "metrics.jsonl", self.cursor.step)
            self.metrics_file = open(self.out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            self.tb = self._tensorboard()
        log.info("setup", config=cfg.model_dump(), examples=len(self.examples), steps=self.total_steps,
                 trainable=sum(p.numel() for p in params), held=distributed.local_numel(self.model.parameters()),
                 device=str(self.device), bf16=self.autocast_bf16,
                 frozen_dtype=str(frozen_dtype).removeprefix("torch."), rank=world.rank, ranks=world.size)

    def _lr_factor(self, step: int) -> float:
        total = self.schedule_steps or self.total_steps
        warmup = int(self.config.warmup_ratio * total)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress,
                "constant": 1.0}[self.config.scheduler]

    def _generated_answers(self, rows: list[dict], renderer: Renderer) -> dict[int, str]:
        """y_gen for methods that learn against the policy's own answers (GSIL/SPIN), when the data has none:
        sampled once from the starting policy and saved, so a resumed run trains on the same answers."""
        path = self.out / "generated.jsonl"
        if path.exists():
            saved = [json.loads(line) for line in path.read_text().splitlines() if line]
            if len(saved) == len(rows):
                return {r["index"]: r["generated"] for r in saved}
        mine = distributed.share(list(range(len(rows))), self.world)  # each rank samples a share (whole model yet)
        prompts = [split_messages(rows[i])[0] for i in mine]
        gen = self.config.generation
        log.info("sampling y_gen from the starting policy", prompts=len(prompts), of=len(rows))
        texts = sample_responses(self.model, self.tokenizer, [renderer.prompt_text(p) for p in prompts],
                                 max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                                 batch_size=gen.batch_size, seed=self.config.seed + self.world.rank,
                                 add_special_tokens=isinstance(split_messages(rows[0])[0], str)) if prompts else []
        generated = {i: t for part in distributed.gather_objects(dict(zip(mine, texts, strict=True)), self.world)
                     for i, t in part.items()}
        if self.world.main:
            self.out.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({"index": i, "generated": generated[i]}) + "\n"
                                    for i in range(len(rows))))
        return generated

    def _tensorboard(self) -> Any:
        if not self.config.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    # ------------------------------------------------------------------ data
    def next_batch(self) -> Batch:
        """The batch at the cursor (this rank's share of it); the cursor moves on (into the next epoch when one
        ends)."""
        plan = self._plan(self.cursor.epoch)
        if self.cursor.batch >= len(plan):
            self.cursor.epoch, self.cursor.batch = self.cursor.epoch + 1, 0
            plan = self._plan(self.cursor.epoch)
        positions = plan[self.cursor.batch]
        self.cursor.batch += 1
        return self._share(self.examples, positions)

    def _share(self, examples: list[Example], positions: list[int]) -> Batch:
        """This rank's share of a global batch. A rank whose share is empty (a batch smaller than the ranks) gets
        the batch's first example with `empty` set: it computes (the ranks' collectives must match) and weighs 0."""
        mine = distributed.share(positions, self.world)
        batch = collate([examples[i] for i in mine or positions[:1]], self.tokenizer.pad_token_id)
        batch.empty = not mine
        return batch.to(self.device)

    def _replay_examples(self) -> list[Example]:
        """config.replay's rows as SFT examples; none when replay is off."""
        spec = self.config.replay
        if spec.data is None:
            return []
        try:
            rows = read_rows(spec.data)
            check_rows(rows, SUPERVISED, source=spec.data)
            examples = build_examples(rows, self.config.model_copy(update={"algo": SUPERVISED}), self.renderer)
        except (DataError, OSError) as e:
            raise DataError(f"replay data {spec.data}: {e}") from None
        log.info("replay", rows=len(examples), weight=spec.weight, batch_size=spec.batch_size)
        return examples

    def replay_batch(self, index: int) -> Batch:
        """The replay rows of micro-batch `index` (counted over the whole run), whose token-mean NLL joins its loss.
        The batch is a function of the index alone, so a resumed run replays what an uninterrupted one would have."""
        size = self.config.replay.batch_size
        per_epoch = math.ceil(len(self.replay) / size)
        epoch, position = divmod(index, per_epoch)
        if self._replay_plan[0] != epoch:
            self._replay_plan = (epoch, plan_batches(self.replay, size, self.config.seed + 1, epoch))
        return self._share(self.replay, self._replay_plan[1][position])

    def _balanced(self, out: LossOutput, batch: Batch) -> tuple[torch.Tensor, float, dict[str, float]]:
        """(the loss to backpropagate, the whole batch's loss, its metrics) from `out`, this rank's share. The loss
        is scaled so that the ranks' averaged gradient is the gradient of the whole batch's loss: by the share's
        part of the batch's denominator (examples, or tokens), times the ranks. One process: `out` as it is."""
        values = [out.loss.item(), *(float(v) for v in out.metrics.values())]
        if not self.world.sharded:
            return out.loss, values[0], dict(zip(out.metrics, values[1:], strict=True))
        mine = 0.0 if batch.empty else out.denominator()
        total, *sums = distributed.all_sum([mine, *(mine * v for v in values)], self.world, self.device)
        total = max(total, 1e-12)
        return (out.loss * (mine / total * self.world.size), sums[0] / total,
                {k: v / total for k, v in zip(out.metrics, sums[1:], strict=True)})

    def _plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            self._plans = {epoch: plan_batches(self.examples, self.config.batch_size, self.config.seed, epoch)}
        return self._plans[epoch]

    # ------------------------------------------------------------------ log-probs
    def policy_logps(self, batch: Batch) -> SeqLogps:
        for passed, out in self._passed:  # computed with other batches' rows in one forward (_one_pass)
            if passed is batch:
                return out
        return sequence_logps(self.model, batch.input_ids, batch.attention_mask, batch.score_mask)

    @contextmanager
    def _one_pass(self, *batches: Batch | None) -> Iterator[None]:
        """Within it, policy_logps of these batches (a step's and its replay's) is its rows of one forward over all
        of them: one larger pass costs less than several small ones (on a CPU, about a sixth less a step for the demo's
        8 answers and 4 replay rows). Right padding and the causal mask keep each row's values what they are
        alone, up to floating-point rounding."""
        parts = [b for b in batches if b is not None]
        if len(parts) < 2:
            yield
            return
        width = max(b.input_ids.shape[1] for b in parts)

        def stacked(name: str, fill: int | bool) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(getattr(b, name), (0, width - b.input_ids.shape[1]), value=fill)
                              for b in parts])

        out = sequence_logps(self.model, stacked("input_ids", self.tokenizer.pad_token_id),
                             stacked("attention_mask", 0), stacked("score_mask", False))
        start = 0
        for b in parts:
            rows = out.rows(slice(start, start + len(b.input_ids)))
            start += len(b.input_ids)
            scored = int(rows.lengths.max()) if len(rows.lengths) else 0  # the width a pass of its own would have
            self._passed.append((b, SeqLogps(rows.logps, rows.lengths, rows.token_logps[:, :scored],
                                             rows.mask[:, :scored])))
        try:
            yield
        finally:
            self._passed = []

    def precompute_reference(self) -> None:
        """Reference (and, for methods that clip against it, round-start) log-probs of every example in one
        no-grad pass before training.

        Cheaper than a reference forward inside each step: no activations are kept, so batches are
        `reference_batch_factor` times larger, and length-sorted so they carry little padding. The
        cache then serves every epoch. A frozen full-model reference is freed afterwards.
        """
        needs = {"reference": self.method.reference(self.config), "proximal": self.method.proximal(self.config)}
        order = sorted(range(len(self.examples)), key=lambda i: self.examples[i].length)
        size = self.config.batch_size * self.config.reference_batch_factor * self.world.size  # each rank a share
        for kind, roles in needs.items():
            if not roles or all((i, role, kind) in self.logp_cache for i in range(len(self.examples))
                                for role in roles if role in self.examples[i].sequences):
                continue
            computed: dict[tuple[int, str, str], tuple[float, torch.Tensor]] = {}
            for start in tqdm(range(0, len(order), size), desc=f"{kind} log-probs", dynamic_ncols=True, leave=False,
                              disable=not self.world.main):
                batch = self._share(self.examples, order[start:start + size])
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
                    found = self._compute_cached(batch, roles, kind)
                if not batch.empty:
                    computed |= found
            for part in distributed.gather_objects(computed, self.world):  # every rank gets every rank's values
                self.logp_cache |= part
        if needs["reference"]:
            self.frozen_reference = None  # every value is cached: the copy is no longer needed

    def _cached(self, batch: Batch, roles: tuple[str, ...], kind: str) -> None:
        """Fill the cache for the batch's sequences of `roles`: reference log-probs (the configured reference) or
        proximal ones (the policy as it is now, adapter on: the start of the round)."""
        keys = [(i, role, kind) for role in roles for i in (batch.indices[b] for b in batch.rows[role])]
        if not all(k in self.logp_cache for k in keys):
            self.logp_cache |= self._compute_cached(batch, roles, kind)

    def _compute_cached(self, batch: Batch, roles: tuple[str, ...], kind: str
                        ) -> dict[tuple[int, str, str], tuple[float, torch.Tensor]]:
        """The cache entries of the batch's sequences of `roles` (a forward pass, whatever the cache holds)."""
        found = {}
        current = kind == "proximal" or self.config.reference == "current"
        ref = reference_logps(self.model, batch.input_ids, batch.attention_mask, batch.score_mask,
                              None if kind == "proximal" else self.frozen_reference, current=current)
        for role in roles:
            rows = ref.rows(batch.slices[role])
            for n, b in enumerate(batch.rows[role]):
                tokens = rows.token_logps[n][rows.mask[n]].float().cpu()
                found[(batch.indices[b], role, kind)] = (float(rows.logps[n]), tokens)
        return found

    def reference_logps(self, batch: Batch, roles: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Reference sequence log-probs per role, computed once per example and cached."""
        self._cached(batch, roles, "reference")
        return {role: torch.tensor([self.logp_cache[(batch.indices[b], role, "reference")][0]
                                    for b in batch.rows[role]], device=self.device) for role in roles}

    def cached_token_logps(self, batch: Batch, role: str, kind: str) -> torch.Tensor:
        """(B_role, L) per-token log-probs of `role`'s responses, left-aligned and zero-padded, under the reference
        (kind "reference") or the policy at the start of the round (kind "proximal"); cached like the sums."""
        self._cached(batch, (role,), kind)
        tokens = [self.logp_cache[(batch.indices[b], role, kind)][1] for b in batch.rows[role]]
        return torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True).to(self.device)

    # ------------------------------------------------------------------ train
    def train(self, stop_after: int | None = None) -> dict[str, float]:
        """Run optimizer steps until the schedule ends (or until step `stop_after`, as a crash would)."""
        cfg, step_fn = self.config, self.method.step
        end = min(self.total_steps, stop_after or self.total_steps)
        if self.cursor.step < end:
            self.precompute_reference()
        bar = tqdm(total=self.total_steps, initial=self.cursor.step, desc=f"{cfg.algo}", dynamic_ncols=True,
                   disable=not self.world.main)
        last: dict[str, float] = {}
        while self.cursor.step < end and not self._stopping():
            started, tokens = time.perf_counter(), 0
            sums: dict[str, float] = defaultdict(float)
            for micro in range(cfg.grad_accum):
                batch = self.next_batch()
                # a likelihood term on fixed demonstrations, in the same forward and backward as the method's loss
                replayed = self.replay_batch(self.cursor.step * cfg.grad_accum + micro) \
                    if self.replay and cfg.replay.weight else None
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16), \
                        self._one_pass(batch, replayed):
                    out = step_fn(self, batch)
                    nll = get_method(SUPERVISED).step(self, replayed) if replayed is not None else None
                loss, value, metrics = self._balanced(out, batch)
                if nll is not None:
                    nll_loss, nll_value, _ = self._balanced(nll, replayed)
                    loss = loss + cfg.replay.weight * nll_loss
                    sums["replay_nll"] += nll_value / cfg.grad_accum
                (loss / cfg.grad_accum).backward()
                tokens += 0 if batch.empty else int(batch.attention_mask.sum())
                sums["loss"] += value / cfg.grad_accum
                for name, v in metrics.items():
                    sums[name] += v / cfg.grad_accum
            grad_norm = distributed.full(torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.cursor.step += 1
            seconds = time.perf_counter() - started  # loss.item() above already waited for the device
            if self.world.sharded:  # every rank's share
                tokens = int(distributed.all_sum([tokens], self.world, self.device)[0])
            self.step_seconds.append(seconds)
            last = {**sums, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens / seconds, "epoch": self.cursor.epoch}
            if self.cursor.step % cfg.log_every == 0 or self.cursor.step == self.total_steps:
                self._log(last)
            bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in _SHOWN}, refresh=False)
            bar.update(1)
            if self.cursor.step % cfg.save_every == 0:
                self.save_checkpoint()
        bar.close()
        return last

    def _stopping(self) -> bool:
        """Whether to stop before the next step (Ctrl-C): when any rank was asked, every rank stops there."""
        if self.world.sharded:
            self.stop_requested = distributed.all_sum([float(self.stop_requested)], self.world, self.device)[0] > 0
        return self.stop_requested

    def check_round(self, rows: list[dict]) -> None:
        """What train_round would refuse of these rows (a ValueError), without training: rank 0 of a sharded live
        trainer asks before the other ranks are sent the round."""
        check_rows(rows, self.config.algo, source="round", empty_responses=True)
        build_examples(rows, self.config, self.renderer)

    def train_round(self, rows: list[dict]) -> dict[str, float]:
        """One pass over a new round's rows (the live trainer): new examples, reference log-probs
        recomputed (with reference="current": the policy as it is now), data order seeded by round."""
        cfg = self.config
        check_rows(rows, cfg.algo, source="round", empty_responses=True)
        self.examples = build_examples(rows, cfg, self.renderer)
        self.logp_cache.clear()
        self.cursor.epoch, self.cursor.batch = self.cursor.epoch + 1, 0
        self._plans = {}
        steps = math.ceil(len(self._plan(self.cursor.epoch)) / cfg.grad_accum)
        self.total_steps = self.cursor.step + steps
        return self.train()

    def _log(self, metrics: dict[str, float]) -> None:
        if self.metrics_file is None:  # not rank 0
            return
        self.metrics_file.write(json.dumps({"step": self.cursor.step, **metrics}) + "\n")
        self.metrics_file.flush()
        if self.tb is not None:
            for name, value in metrics.items():
                self.tb.add_scalar(name, value, self.cursor.step)

    # ------------------------------------------------------------------ save / cleanup
    def save_checkpoint(self, extra: dict[str, Any] | None = None, *, new: bool = False,
                        pinned: Collection[str] = ()) -> Path:
        """A checkpoint of everything resume needs; `extra` is kept with it (resumed_extra after a resume).
        `new` and `pinned` as trainer.checkpoint.save_checkpoint."""
        proximal = {k: v for k, v in self.logp_cache.items() if k[2] == "proximal"}
        path = save_checkpoint(self.out / "checkpoints", self.model, self.tokenizer, self.optimizer, self.scheduler,
                               self.cursor, self.config.model_dump(), self.config.keep_checkpoints, extra,
                               {"proximal": proximal} if proximal else None, new=new, pinned=pinned, world=self.world)
        distributed.barrier(self.world)  # rank 0 has written it
        log.info("checkpoint", path=str(path), step=self.cursor.step)
        return path

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The LoRA adapter's tensors under peft's keys, on the CPU, gathered when sharded (every rank calls it)."""
        from trainer.adapters import adapter_parameters, read_adapter  # peft: only where there is an adapter

        if self._adapter_params is None:
            self._adapter_params = adapter_parameters(self.model)
        return read_adapter(self._adapter_params)

    def restore(self, path: Path) -> None:
        """The weights, optimizer and scheduler of an earlier checkpoint (a rollback); the step count goes on."""
        cursor = self.cursor
        load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        self.cursor = cursor
        self.logp_cache.clear()
        log.info("restored", checkpoint=str(path), step=self.cursor.step)

    def save_final(self) -> Path:
        path = export_final(self.model, self.tokenizer, self.out, self.world)
        distributed.barrier(self.world)
        log.info("saved", path=str(path))
        return path

    def cleanup(self) -> None:
        """Close what setup opened (all of it, or what it got to before an interrupt)."""
        if getattr(self, "metrics_file", None) is not None:
            self.metrics_file.close()
        if getattr(self, "tb", None) is not None:
            self.tb.close()


_SHOWN = {"loss", "nll", "margin", "accuracy", "r_real", "r_generated", "real_term", "generated_term", "l1", "l2",
          "flagged_fraction", "r_chosen", "r_rejected", "kl", "clip_fraction", "replay_nll"}


class Interrupted(Exception):
    """Ctrl-C stopped `run` between two steps; a checkpoint of that step was saved (`--resume` continues).
    Before training started, nothing was trained and `checkpoint` is None."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}; saved {checkpoint} (--resume continues from it)" if checkpoint
                         else "interrupted before training started; nothing was trained or saved")
        self.step, self.checkpoint = step, checkpoint


def run(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
    """check the output folder -> setup -> train -> save the final adapter/model -> cleanup. Returns the last step's
    metrics. Ctrl-C (SIGINT, in the main thread) finishes the current step, saves a checkpoint and raises
    Interrupted; a second Ctrl-C stops at once. Under torchrun every rank calls it: rank 0 checks the output folder
    and writes, all of them train (trainer/distributed.py)."""
    recipe = Recipe(config, resume=resume)
    if recipe.world.main:
        prepare_out(config, resume=resume, overwrite=overwrite)
    try:
        metrics = _run(recipe, config)
        distributed.barrier(recipe.world)  # every rank done with its collectives before the group goes (gloo can
        return metrics                     # abort a rank whose peer tears the group down under it)
    finally:
        distributed.stop()


def _run(recipe: Recipe, config: TrainConfig) -> dict[str, float]:
    try:
        recipe.setup()
    except KeyboardInterrupt:  # while loading the model or data: nothing to save
        recipe.cleanup()
        raise Interrupted(0, None) from None
    try:
        with _stop_on_interrupt(recipe):
            metrics = recipe.train()
        if recipe.stop_requested and recipe.cursor.step < recipe.total_steps:  # during the last step: finish
            raise Interrupted(recipe.cursor.step, recipe.save_checkpoint())
        if recipe.cursor.step % config.save_every:
            recipe.save_checkpoint()
        recipe.save_final()
        return metrics
    finally:
        recipe.cleanup()


@contextmanager
def _stop_on_interrupt(recipe: Recipe) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield
        return

    def first(*_: object) -> None:
        recipe.stop_requested = True
        log.warning("interrupted: stopping after this step and saving a checkpoint (Ctrl-C again stops at once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
