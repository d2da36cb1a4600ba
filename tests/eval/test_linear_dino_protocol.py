"""Issue 12.4: DINO's linear protocol (augmented views through the frozen backbone) next to the cached grid.

Reference: facebookresearch/dino, eval_linear.py: ``--n_last_blocks 4`` ([CLS] of the last 4 blocks for
ViT-S), ``--avgpool_patchtokens False``, ``--epochs 100``, ``--lr 0.001`` (x global batch / 256),
``--batch_size_per_gpu 128`` on 8 GPUs, SGD momentum 0.9, weight decay 0, cosine to 0; train views
``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()``, the backbone re-run on them every epoch; val views
``Resize(256, bicubic)`` + ``CenterCrop(224)``.
"""

from __future__ import annotations

import json

import torch
from torchvision.transforms import v2

from sparsedino.data.imagenet import ImageNetFolder
from sparsedino.data.joint_transforms import make_classification_transform
from sparsedino.eval.command import main
from sparsedino.eval.linear import run_linear
from sparsedino.eval.settings import load_protocol_config


def test_dino_preset_states_dino_eval_linear_settings():
    cfg = load_protocol_config("linear", "eval_linear_dino")
    assert cfg.train_mode == "augment"
    assert (list(cfg.n_last_blocks), list(cfg.avgpool), cfg.epochs) == ([4], [False], 100)
    assert (list(cfg.lrs), cfg.batch_size, cfg.momentum, cfg.weight_decay) == ([1e-3], 128 * 8, 0.9, 0.0)
    assert (cfg.resize, cfg.crop) == (256, 224)
    train = make_classification_transform(train=True, crop=cfg.crop)
    crop = next(t for t in train.transforms if isinstance(t, v2.RandomResizedCrop))
    assert tuple(crop.size) == (224, 224) and tuple(crop.scale) == (0.08, 1.0)
    assert (
        str(getattr(crop.interpolation, "value", crop.interpolation)) == "bilinear"
    )  # torchvision default, as DINO
    assert any(isinstance(t, v2.RandomHorizontalFlip) for t in train.transforms)


def test_augment_mode_reruns_the_backbone_on_new_views_every_epoch(tiny_vit, synth_root):
    cfg = load_protocol_config(
        "linear",
        "eval_linear_dino",
        [f"data_root={synth_root / 'imagenet'}", "resize=32", "crop=32", "epochs=3", "batch_size=16",
         "n_last_blocks=[1]", "features.device=cpu", "features.num_workers=0"],
    )  # fmt: skip
    transform = make_classification_transform(train=False, crop=32, resize=32)
    train = ImageNetFolder(synth_root / "imagenet", "train", transform)
    val = ImageNetFolder(synth_root / "imagenet", "val", transform)
    seen: list[torch.Tensor] = []
    hook = tiny_vit.patch_embed.register_forward_hook(
        lambda m, inp, out: seen.append(inp[0].detach().clone())
    )
    torch.manual_seed(0)
    result = run_linear(tiny_vit, train, val, cfg)
    hook.remove()
    n_train, n_val = len(train), len(val)
    sizes = [x.shape[0] for x in seen]
    assert sum(sizes) == n_val + 3 * n_train  # val encoded once, train re-encoded in each of the 3 epochs
    train_inputs = torch.cat(seen)[n_val:].reshape(3, n_train, -1)
    assert not torch.allclose(train_inputs[0].sort(0).values, train_inputs[1].sort(0).values)  # new views
    assert result["train_mode"] == "augment" and "RandomResizedCrop" in result["augmentation"]
    assert result["protocol_variant"].startswith("DINO")


def test_results_name_the_protocol_that_produced_them(tmp_path, tiny_vit, synth_root):
    checkpoint = tmp_path / "vit.pth"
    torch.save(tiny_vit.state_dict(), checkpoint)
    argv = ["linear", "--checkpoint", str(checkpoint), "--data", str(synth_root / "imagenet"), "--out",
            str(tmp_path), "resize=32", "crop=32", "epochs=1", "lrs=[0.1]", "n_last_blocks=[1]",
            "features.device=cpu"]  # fmt: skip
    assert main(argv) == 0
    cached = json.loads((tmp_path / "linear.json").read_text())
    assert cached["train_mode"] == "cached" and "not DINO's protocol" in cached["protocol_variant"]
    assert "train_mode" in (tmp_path / "linear.md").read_text()
