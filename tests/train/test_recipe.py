"""DINO loss, schedules, parameter groups and clipping."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from sparsedino.models import DINOHead, MultiCropWrapper, build_vit
from sparsedino.train.loop import clip_gradients, ema_update
from sparsedino.train.loss import DINOLoss
from sparsedino.train.schedules import cosine_schedule, param_groups


def test_dino_loss_matches_the_definition_and_updates_center():
    torch.manual_seed(0)
    b, k = 3, 10
    student, teacher = torch.randn(4 * b, k), torch.randn(2 * b, k)
    loss_fn = DINOLoss(k, n_crops=4, n_global=2, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9)
    loss = loss_fn(student, teacher, epoch=0)
    q = F.softmax(teacher / 0.04, dim=-1).chunk(2)
    logp = F.log_softmax(student / 0.1, dim=-1).chunk(4)
    terms = [(-q[i] * logp[j]).sum(-1).mean() for i in range(2) for j in range(4) if i != j]
    torch.testing.assert_close(loss, sum(terms) / len(terms))
    torch.testing.assert_close(loss_fn.center, 0.1 * teacher.mean(0, keepdim=True))
    assert list(loss_fn.state_dict()) == ["center"]


def test_teacher_temperature_warms_up_linearly():
    loss_fn = DINOLoss(
        8, 4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30, epochs=100
    )
    assert loss_fn.teacher_temp(0) == 0.04 and math.isclose(loss_fn.teacher_temp(30), 0.07)
    assert 0.04 < loss_fn.teacher_temp(15) < 0.07 and loss_fn.teacher_temp(500) == 0.07


def test_cosine_schedule_with_warmup():
    sched = cosine_schedule(1.0, 0.1, epochs=10, iters_per_epoch=5, warmup_epochs=2)
    assert len(sched) == 50 and sched[0] == 0.0
    assert np.all(np.diff(sched[:10]) > 0) and math.isclose(sched[10], 1.0)
    assert np.all(np.diff(sched[10:]) <= 0) and sched[-1] > 0.1 - 1e-9


def test_no_weight_decay_on_biases_and_norms():
    net = MultiCropWrapper(
        build_vit("vit_pico", patch_size=8, img_size=32), DINOHead(48, 16, hidden_dim=8, bottleneck_dim=8)
    )
    decay, no_decay = param_groups(net)
    names = {id(p): n for n, p in net.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"])
    no_decay_names = [names[id(p)] for p in no_decay["params"]]
    assert "backbone.norm.weight" in no_decay_names and "backbone.blocks.0.attn.qkv.bias" in no_decay_names
    assert no_decay["weight_decay"] == 0.0
    frozen_g = net.head.last_layer.parametrizations.weight.original0
    assert all(p is not frozen_g for group in (decay, no_decay) for p in group["params"])


def test_per_param_and_global_clipping():
    lin = torch.nn.Linear(4, 4)
    lin.weight.grad, lin.bias.grad = torch.full((4, 4), 10.0), torch.full((4,), 0.1)
    clip_gradients(lin, 3.0, "per_param")
    assert math.isclose(lin.weight.grad.norm().item(), 3.0, rel_tol=1e-4)
    assert torch.allclose(lin.bias.grad, torch.full((4,), 0.1))  # already below the threshold
    lin.weight.grad, lin.bias.grad = torch.full((4, 4), 10.0), torch.full((4,), 10.0)
    clip_gradients(lin, 3.0, "global")
    total = torch.cat([lin.weight.grad.flatten(), lin.bias.grad]).norm().item()
    assert math.isclose(total, 3.0, rel_tol=1e-4)


def test_ema_update():
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.9 * teacher.weight.detach() + 0.1 * student.weight.detach()
    ema_update(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight.detach(), expected)
