"""The DINO training loop: :func:`run_training` (in-process) is what ``sparsedino train`` calls."""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sparsedino.atomic import atomic_write_json, check_output_dir, remove_stale_temps
from sparsedino.config import ConfigError, config_to_dict, save_config
from sparsedino.runlock import RunLock
from sparsedino.train.alpha_schedule import AlphaSchedule
from sparsedino.train.build import Precision, build_loss, build_networks, build_optimizer, resolve_precision
from sparsedino.train.checkpointing import (
    LATEST,
    SUMMARY,
    TrainState,
    epoch_snapshot_name,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_snapshot,
)
from sparsedino.train.data import (
    ResumableDistributedSampler,
    build_dataset,
    build_loader,
    main_process_threads,
)
from sparsedino.train.distributed import DistInfo, all_reduce_sum, cleanup, gather_objects, init_distributed
from sparsedino.train.gram import GramAnchor
from sparsedino.train.init_from import initialise_networks, with_init_record
from sparsedino.train.metrics import MetricLogger, truncate_jsonl
from sparsedino.train.schedules import make_schedules
from sparsedino.train.settings import TrainConfig, canonical, validate
from sparsedino.train.updates import (
    clip_gradients,
    ema_update,
    first_nonfinite_gradient,
    gradients_finite,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN/inf; training stopped before the weights were touched."""


# fp16: consecutive steps the GradScaler may skip for overflowing gradients before the run is stopped. A
# healthy run skips a handful while the scale settles from 2**16 (8 in the CPU tests) and then rarely;
# 32 halvings in a row (scale / 4e9) mean the gradients cannot be represented at any scale.
MAX_OVERFLOW_STREAK = 32


class Trainer:
    """Holds the run's objects; :meth:`fit` trains from the current position to the last epoch."""

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo) -> None:
        # Everything that can refuse the run (data, precision, model, a resume) is checked before the first
        # write to the output folder: a refused run leaves the folder as it was.
        self.cfg, self.dist = cfg, dist_info
        self.out = Path(cfg.run.output_dir)
        seed = cfg.run.seed
        self.dataset = build_dataset(cfg)  # fails fast on missing/empty folders
        self.sampler = ResumableDistributedSampler(self.dataset, dist_info.world_size, dist_info.rank, seed)
        bs = cfg.optim.batch_size_per_gpu
        iters = self.sampler.num_samples // bs
        if iters == 0:
            raise ConfigError(
                f"data.path {cfg.data.path!r}: {len(self.dataset)} images are fewer than one global batch "
                f"({bs} per process x {dist_info.world_size} processes)"
            )
        if cfg.run.max_iters_per_epoch > 0:
            iters = min(iters, cfg.run.max_iters_per_epoch)
        self.precision: Precision = resolve_precision(cfg.run.precision, dist_info.device)
        # Same seed on every rank -> identical initial weights (DDP also broadcasts rank 0's).
        torch.manual_seed(seed)
        self.nets = build_networks(cfg, dist_info)
        self.loss_fn = build_loss(cfg).to(dist_info.device)
        self.optimizer = build_optimizer(cfg, self.nets.student)
        # alpha schedule (softmax -> target over model.alpha_warmup_epochs) and Gram anchoring (cfg.gram)
        self.alpha = AlphaSchedule(cfg, iters)
        self.gram = GramAnchor(cfg, self.nets.teacher.backbone, iters) if cfg.gram.enabled else None
        self.init_record: dict | None = None  # the init.checkpoint source, once read (or resumed)
        self.gram_value: torch.Tensor | None = None  # the last step's unweighted Gram loss
        nets, scaler = self.nets, self.precision.scaler()
        self.state = TrainState(nets.student, nets.teacher, self.optimizer, scaler, self.loss_fn, self.gram)
        self.sched = make_schedules(cfg, iters, dist_info.world_size)
        self.epoch, self.iteration, self.global_step, self.skipped_total = 0, 0, 0, 0
        self.overflow_streak = 0  # fp16: consecutive steps skipped by the GradScaler
        # One writer per run folder (main rank): a second `train` on it is refused, naming this pid.
        self.lock = RunLock(self.out, "run.output_dir").acquire() if dist_info.is_main else None
        try:
            self._open_run(iters)
        except BaseException:
            self.discard_failed_start()
            self.close()
            raise

    def _open_run(self, iters: int) -> None:
        """Resume from the folder's checkpoint (or seed a fresh run), then write the resolved config."""
        cfg, dist_info, seed = self.cfg, self.dist, self.cfg.run.seed
        latest = self.out / LATEST
        self.fresh = not (cfg.run.resume and latest.is_file())
        if not self.fresh:
            pos = load_checkpoint(latest, self.state, cfg, dist_info.rank, dist_info.world_size)
            self.epoch, self.iteration, self.global_step = pos["epoch"], pos["iteration"], pos["global_step"]
            self.skipped_total = pos["skipped_images"]
            self.init_record = pos["init"]  # an initialised run resumes its own checkpoint, never the source
            if self.init_record:
                self.cfg = cfg = with_init_record(cfg, self.init_record)
            if self.iteration >= iters:  # killed between the last step's checkpoint and the epoch end
                self.epoch, self.iteration = self.epoch + 1, 0
            log.info("resumed from %s at epoch %d iteration %d", latest, self.epoch, self.iteration)
        else:
            if cfg.init.checkpoint:  # before the seeding below: reading the source builds a model
                self.init_record = initialise_networks(cfg, self.nets, self.loss_fn)
                self.cfg = cfg = with_init_record(cfg, self.init_record)
            # Per-rank streams for drop path etc.; data augmentation is seeded per sample instead.
            torch.manual_seed(seed + dist_info.rank)
            random.seed(seed + dist_info.rank)
            np.random.seed((seed + dist_info.rank) % 2**32)  # noqa: NPY002
        if dist_info.is_main:
            for tmp in remove_stale_temps(self.out):  # half-written files of a run killed mid-write
                log.info("removed %s, left by an interrupted write", tmp)
            # records after the restart point (all of them for a fresh start) will be logged again
            truncate_jsonl(self.out / "metrics.jsonl", self.global_step)
            save_config(cfg, self.out / "config.yaml")
        self.logger = MetricLogger(
            self.out,
            enabled=dist_info.is_main,
            tensorboard=cfg.log.tensorboard,
            wandb=cfg.log.wandb,
            wandb_project=cfg.log.wandb_project,
            wandb_run_name=cfg.log.wandb_run_name,
            config=config_to_dict(cfg),
        )

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, epoch: int, iteration: int) -> None:
        rngs = gather_objects(rng_state())  # collective: every rank calls save()
        if self.dist.is_main:
            save_checkpoint(
                self.out / LATEST,
                self.state,
                self.cfg,
                epoch,
                iteration,
                self.global_step,
                rngs,
                self.skipped_total,
                self._meta(),
            )

    def _meta(self) -> dict:
        """Checkpoint metadata beyond the config: the attention at this step (what load_backbone rebuilds,
        mid alpha schedule too) and the initialisation source."""
        return {"normalizer": self.alpha.normalizer_at(self.global_step).name, "init": self.init_record}

    # ---- one iteration -----------------------------------------------------------------------
    def step(self, crops: list[torch.Tensor], epoch: int) -> torch.Tensor:
        """Forward, backward, clip, optimiser step, teacher EMA. Returns the local loss (detached)."""
        cfg, it = self.cfg, self.global_step
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.sched.lr[it])
            if not group.get("no_decay"):
                group["weight_decay"] = float(self.sched.wd[it])
        crops = [c.to(self.dist.device, non_blocking=True) for c in crops]
        self.alpha.apply(it, self.nets.student, self.nets.teacher)
        n_global = cfg.data.global_crops_number
        n_student = n_global + cfg.data.local_crops_number  # (the Gram teacher's crops, if any, follow)
        gram_w = self.gram.weight(it) if self.gram is not None else 0.0
        self.gram_value = None
        with self.precision.autocast():
            teacher_out = self.nets.teacher(crops[:n_global])  # (n_global * B, K)
            if gram_w > 0:  # the student's global-crop patch tokens come from the same forward
                student_out, patches = self.nets.student_ddp(crops[:n_student], patches_of=n_global)
                self.gram_value = self.gram.loss(patches, crops[n_student:] or crops[:n_global])
            else:
                student_out = self.nets.student_ddp(crops[:n_student])  # (n_crops * B, K)
            loss = self.loss_fn(student_out, teacher_out, epoch)
            if self.gram_value is not None:
                loss = loss + gram_w * self.gram_value
        return loss

    def update(self, loss: torch.Tensor, epoch: int) -> None:
        """Backward, clip, optimiser step (skipped by the fp16 GradScaler on overflow), teacher EMA.

        Raises:
            NonFiniteLossError: non-finite gradients without a GradScaler, or more than
                ``MAX_OVERFLOW_STREAK`` consecutive overflowing fp16 steps; nothing has been updated.
        """
        cfg, scaler, student = self.cfg, self.state.scaler, self.nets.student
        self.optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
        else:
            loss.backward()
            # Without a GradScaler nothing would skip the step: stop before NaN reaches the weights (and
            # the next checkpoint).
            if not gradients_finite(student):
                raise NonFiniteLossError(
                    f"non-finite gradient of {first_nonfinite_gradient(student)!r} at epoch {epoch} iteration "
                    f"{self.iteration} (step {self.global_step}) with a finite loss; {self._stopped_hint()}"
                )
        clip_gradients(student, cfg.optim.clip_grad, cfg.optim.clip_mode)
        if epoch < cfg.optim.freeze_last_layer:  # DINO: keep the prototypes fixed at the start
            for name, param in student.named_parameters():
                if "last_layer" in name:
                    param.grad = None
        if scaler is not None:
            scale = scaler.get_scale()
            scaler.step(self.optimizer)  # skipped when unscale_ found inf/NaN
            scaler.update()  # ... and then the scale is halved
            self.overflow_streak = self.overflow_streak + 1 if scaler.get_scale() < scale else 0
            if self.overflow_streak > MAX_OVERFLOW_STREAK:
                raise NonFiniteLossError(
                    f"fp16 gradients overflowed in {self.overflow_streak} consecutive steps (loss scale now "
                    f"{scaler.get_scale():.3g}) up to epoch {epoch} iteration {self.iteration} (step "
                    f"{self.global_step}); {self._stopped_hint()}"
                )
        else:
            self.optimizer.step()
        ema_update(self.nets.teacher, student, float(self.sched.momentum[self.global_step]))

    def _stopped_hint(self) -> str:
        latest = self.out / LATEST
        kept = f"the last good checkpoint {str(latest)!r} is intact"
        kept = kept if latest.is_file() else "no checkpoint had been written yet"
        tips = "a lower optim.lr, run.precision=bf16/fp32, optim.clip_grad>0 or a larger optim.teacher_temp"
        return f"training stopped, {kept}. Try {tips}."

    # ---- epochs ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        cfg, bs = self.cfg, self.cfg.optim.batch_size_per_gpu
        ipe = self.sched.iters_per_epoch
        self.sampler.set_position(epoch, self.iteration * bs)
        if self.gram is not None and self.iteration == 0:  # the Gram teacher's snapshots (epoch starts)
            self.gram.maybe_sync(
                epoch, self.nets.teacher.backbone, self.alpha.normalizer_at(self.global_step)
            )
        loader = build_loader(self.dataset, self.sampler, cfg, epoch, self.dist.rank)
        self.nets.student.train()
        self.nets.teacher.train()
        bar = tqdm(
            total=ipe,
            initial=self.iteration,
            desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
            disable=not (cfg.run.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        global_batch = bs * self.dist.world_size
        loss_sum, n_steps, tick, since = 0.0, 0, time.perf_counter(), 0
        for crops, skipped in loader:
            if self.iteration >= ipe:
                break
            loss = self.step(crops, epoch)
            # One all-reduce per step: mean loss over ranks + skipped-image count. Every rank then
            # agrees on whether the loss is finite, so all stop together.
            stats = all_reduce_sum(
                torch.stack([loss.detach().float(), skipped.sum().float().to(loss.device)])
            )
            loss_value = stats[0].item() / self.dist.world_size
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss is {loss_value} at epoch {epoch} iteration {self.iteration} (step {self.global_step}); "
                    f"{self._stopped_hint()}"
                )
            self.update(loss, epoch)
            self.iteration += 1
            self.global_step += 1
            loss_sum, n_steps, since = loss_sum + loss_value, n_steps + 1, since + 1
            self.skipped_total += int(stats[1].item())
            if self.global_step % max(cfg.run.log_every, 1) == 0 or self.iteration == ipe:
                elapsed = time.perf_counter() - tick
                record = {
                    "step": self.global_step,
                    "epoch": epoch,
                    "iteration": self.iteration,
                    "loss": loss_value,
                    "lr": float(self.sched.lr[self.global_step - 1]),
                    "wd": float(self.sched.wd[self.global_step - 1]),
                    "momentum": float(self.sched.momentum[self.global_step - 1]),
                    "teacher_temp": self.loss_fn.teacher_temp(epoch),
                    "images_per_s": since * global_batch / max(elapsed, 1e-9),
                    "skipped_images": self.skipped_total,
                }
                if self.state.scaler is not None:
                    record["loss_scale"] = self.state.scaler.get_scale()
                if cfg.model.alpha_warmup_epochs:
                    record["alpha"] = self.alpha.normalizer_at(self.global_step - 1).alpha
                if self.gram is not None:
                    record["gram_weight"] = self.gram.weight(self.global_step - 1)
                    record["gram_loss"] = (
                        float(self.gram_value.detach()) if self.gram_value is not None else None
                    )
                self.logger.log(record, self.global_step)
                bar.set_postfix(
                    loss=f"{loss_value:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{record['images_per_s']:.1f}"
                )
                tick, since = time.perf_counter(), 0
            bar.update(1)
            every = cfg.run.checkpoint_every_iters
            if every > 0 and self.iteration % every == 0 and self.iteration < ipe:
                self.save(epoch, self.iteration)
        bar.close()
        return loss_sum / max(n_steps, 1)

    def fit(self) -> Path:
        cfg = self.cfg
        every = cfg.run.checkpoint_every_epochs
        if self.dist.is_main and every > 0 and self.global_step == 0:
            # epoch 0 = the initialisation: the baseline point of every quality-over-training curve
            save_snapshot(self.out / epoch_snapshot_name(0), self.state, cfg, 0, self._meta())
        for epoch in range(self.epoch, cfg.optim.epochs):
            self.epoch = epoch
            mean_loss = self.train_epoch(epoch)
            self.iteration = 0
            self.save(epoch + 1, 0)
            if self.dist.is_main and every > 0 and (epoch + 1) % every == 0:
                snapshot = self.out / epoch_snapshot_name(epoch + 1)
                save_snapshot(snapshot, self.state, cfg, epoch + 1, self._meta())
            self.logger.log(
                {"step": self.global_step, "epoch_end": epoch + 1, "epoch_loss": mean_loss}, self.global_step
            )
            self.logger.flush()
        if self.dist.is_main:
            atomic_write_json(
                self.out / SUMMARY,
                {
                    "epochs": cfg.optim.epochs,
                    "global_step": self.global_step,
                    "world_size": self.dist.world_size,
                    "global_batch": cfg.optim.batch_size_per_gpu * self.dist.world_size,
                    "skipped_images": self.skipped_total,
                    "checkpoint": LATEST,
                },
            )
        self.logger.close()
        return self.out

    def discard_failed_start(self) -> None:
        """After a fresh run failed before its first checkpoint: remove the set-up files it wrote."""
        if self.dist.is_main and getattr(self, "fresh", False) and not (self.out / LATEST).exists():
            for name in ("config.yaml", epoch_snapshot_name(0)):
                (self.out / name).unlink(missing_ok=True)

    def close(self) -> None:
        """Release the run folder's lock (the process exiting releases it too)."""
        if self.lock is not None:
            self.lock.release()


def run_training(cfg: TrainConfig) -> Path:
    """Train DINO as described by ``cfg`` (from :func:`sparsedino.config.load_config`); return the output dir.

    Works in-process on CPU with no launcher, and under ``torchrun`` / Slurm as one rank of a DDP job.
    Resumes automatically from ``<output_dir>/checkpoint.pth`` when ``run.resume`` is true.

    Raises:
        ConfigError: invalid settings (before any work).
        NonFiniteLossError: the loss became NaN/inf.
    """
    validate(cfg)
    cfg = canonical(cfg)  # (a config built without load_train_config may spell the normaliser otherwise)
    check_output_dir(cfg.run.output_dir, "run.output_dir")
    owned = not (dist.is_available() and dist.is_initialized())
    dist_info = init_distributed(cfg.run.device, cfg.run.dist_timeout_s)
    trainer = None
    try:
        trainer = Trainer(cfg, dist_info)
        with main_process_threads(dist_info.device, cfg.data.num_workers):
            return trainer.fit()
    except BaseException as err:
        if dist_info.distributed:
            log.error("rank %d failed: %s", dist_info.rank, err)
        if trainer is not None:
            trainer.discard_failed_start()  # nothing half set up is left: the next run starts clean
        raise
    finally:
        if trainer is not None:
            trainer.close()
        if owned:
            cleanup()
