"""The DINO self-distillation loss with a centred, sharpened teacher."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class DINOLoss(nn.Module):
    """Cross-entropy between the teacher's centred, sharpened softmax and the student's softmax.

    Every teacher view (global crop) is compared with every student view except the same crop; the
    mean over pairs is returned. The centre is an EMA of the teacher's batch mean, all-reduced over
    ranks when a process group exists. Its state dict holds ``center`` (official DINO layout).

    Args:
        out_dim: head output size.
        n_crops: student views per image (global + local).
        n_global: teacher views per image.
        warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, epochs: the teacher temperature
            rises linearly from ``warmup_teacher_temp`` to ``teacher_temp`` then stays.
        student_temp: student temperature.
        center_momentum: EMA momentum of the centre.
    """

    def __init__(
        self,
        out_dim: int,
        n_crops: int,
        n_global: int = 2,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        epochs: int = 100,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.n_crops, self.n_global = n_crops, n_global
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temps = np.concatenate(
            (
                np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
                np.full(max(epochs - warmup_teacher_temp_epochs, 1), teacher_temp),
            )
        )

    def teacher_temp(self, epoch: int) -> float:
        """Teacher temperature at ``epoch``."""
        return float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, epoch: int) -> torch.Tensor:
        """Args: student_out (n_crops * B, K), teacher_out (n_global * B, K) logits. Returns the scalar loss."""
        student_logp = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(self.n_crops)
        teacher = teacher_out.detach().float()
        teacher_p = F.softmax((teacher - self.center) / self.teacher_temp(epoch), dim=-1).chunk(self.n_global)
        total, n_terms = student_out.new_zeros((), dtype=torch.float32), 0
        for t_idx, q in enumerate(teacher_p):
            for s_idx, logp in enumerate(student_logp):
                if s_idx == t_idx:  # same crop seen by both: skipped
                    continue
                total = total + torch.sum(-q * logp, dim=-1).mean()
                n_terms += 1
        self.update_center(teacher)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the teacher's batch mean (over all ranks when distributed)."""
        batch_sum = teacher_out.sum(dim=0, keepdim=True)  # (1, K)
        count = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        batch_center = batch_sum / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
