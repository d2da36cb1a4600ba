"""Build the student/teacher pair, the loss, the optimiser and the precision settings from a config."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from sparsedino.models import DINOHead, MultiCropWrapper, build_vit
from sparsedino.train.distributed import DistInfo
from sparsedino.train.loss import DINOLoss
from sparsedino.train.schedules import param_groups
from sparsedino.train.settings import TrainConfig, check_fp16_device


def build_network(cfg: TrainConfig, drop_path_rate: float) -> MultiCropWrapper:
    """Backbone + DINO head as configured (the student gets drop path, the teacher none)."""
    m = cfg.model
    backbone = build_vit(
        arch=m.arch,
        patch_size=m.patch_size,
        img_size=m.img_size,
        normalizer=m.normalizer,
        drop_path_rate=drop_path_rate,
        num_registers=m.num_registers,
        attn_scale=m.attn_scale,
        learn_alpha=m.learn_alpha,
    )
    head = DINOHead(
        backbone.embed_dim,
        m.out_dim,
        use_bn=m.use_bn_in_head,
        norm_last_layer=m.norm_last_layer,
        nlayers=m.head_layers,
        hidden_dim=m.hidden_dim,
        bottleneck_dim=m.bottleneck_dim,
    )
    return MultiCropWrapper(backbone, head)


@dataclass
class Networks:
    student: MultiCropWrapper  # unwrapped, for state dicts and EMA
    student_ddp: nn.Module  # what the forward pass calls (DDP-wrapped when distributed)
    teacher: MultiCropWrapper


def build_networks(cfg: TrainConfig, dist_info: DistInfo) -> Networks:
    """Student and teacher with identical initial weights on ``dist_info.device``."""
    student = build_network(cfg, cfg.model.drop_path_rate)
    teacher = build_network(cfg, 0.0)
    if cfg.model.use_bn_in_head and dist_info.distributed:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)  # updated only by EMA
    student.to(dist_info.device)
    teacher.to(dist_info.device)
    student_ddp: nn.Module = student
    if dist_info.distributed:
        device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        student_ddp = DistributedDataParallel(student, device_ids=device_ids)
    return Networks(student=student, student_ddp=student_ddp, teacher=teacher)


def build_loss(cfg: TrainConfig) -> DINOLoss:
    o, d = cfg.optim, cfg.data
    return DINOLoss(
        out_dim=cfg.model.out_dim,
        n_crops=d.global_crops_number + d.local_crops_number,
        n_global=d.global_crops_number,
        warmup_teacher_temp=o.warmup_teacher_temp,
        teacher_temp=o.teacher_temp,
        warmup_teacher_temp_epochs=o.warmup_teacher_temp_epochs,
        epochs=o.epochs,
        student_temp=o.student_temp,
        center_momentum=o.center_momentum,
    )


def build_optimizer(cfg: TrainConfig, student: nn.Module) -> torch.optim.Optimizer:
    """AdamW (DINO's default) or SGD; lr and weight decay are set by the schedules every iteration."""
    groups = param_groups(student)
    if cfg.optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=0.9)
    return torch.optim.AdamW(groups, lr=0.0)


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    device_type: str

    def autocast(self) -> AbstractContextManager:
        if self.name == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``auto``: bf16 on CUDA when supported else fp16 (with GradScaler); fp32 on CPU."""
    if requested == "auto":
        if device.type == "cuda":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            requested = "fp32"
    if requested == "fp16":
        check_fp16_device(device.type)
    return Precision(requested, device.type)
