"""``init.checkpoint``: a new run from each checkpoint kind users have, exact at step 0, recorded, refused
when the architecture differs."""

from __future__ import annotations

import argparse
import hashlib

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from sparsedino.models import DINOHead, MultiCropWrapper, build_vit, load_backbone
from sparsedino.models.formats import CheckpointError
from sparsedino.train import load_train_config, run_training
from sparsedino.train.distributed import DistInfo
from sparsedino.train.loop import Trainer

# the tiny config's head (tests/train/conftest.py): out_dim 64, hidden 64, bottleneck 32, 3 layers
HEAD = {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32}


def _dino_network(seed: int) -> MultiCropWrapper:
    torch.manual_seed(seed)
    backbone = build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax")
    return MultiCropWrapper(backbone, DINOHead(48, **HEAD))


def _timm_pico(seed: int, **kwargs) -> torch.nn.Module:
    """A stock timm ViT of vit_pico's shape: the layout of official DINO backbone files and timm weights."""
    torch.manual_seed(seed)
    shape = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3)
    return timm.create_model("vit_small_patch16_224", **shape, **kwargs).eval()


def _source(kind: str, tmp_path, image_root, tiny_overrides):
    """(file, reference backbone, reference head state or None, centre or None) in the kind's own layout."""
    if kind == "sparsedino":  # our training checkpoint, trained for a few steps
        out = tmp_path / "ours"
        run_training(load_train_config("dino_cpu_tiny", tiny_overrides(
            image_root, out, "model.normalizer=softmax", "optim.epochs=1", "run.max_iters_per_epoch=2")))  # fmt: skip
        ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
        net = _dino_network(0)
        net.load_state_dict(ckpt["teacher"])
        return out / "checkpoint.pth", net.backbone.eval(), net.head.state_dict(), ckpt["dino_loss"]["center"]
    if kind == "dino":  # official DINO full checkpoint: DDP-prefixed student, pickled Namespace args
        student, teacher = _dino_network(1), _dino_network(2)
        center = torch.randn(1, HEAD["out_dim"])
        ckpt = {
            "student": {f"module.{k}": v for k, v in student.state_dict().items()},
            "teacher": teacher.state_dict(),
            "optimizer": {},
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_pico", patch_size=8, out_dim=64),
            "dino_loss": {"center": center},
            "fp16_scaler": None,
        }
        path = tmp_path / "dino_full_checkpoint.pth"
        torch.save(ckpt, path)
        return path, teacher.backbone.eval(), teacher.head.state_dict(), center
    if kind == "dino_backbone":  # official DINO backbone file (dino_deitsmall16_pretrain.pth layout)
        ref = _timm_pico(3, num_classes=0)
        path = tmp_path / "dino_backbone.pth"
        torch.save(ref.state_dict(), path)
        return path, ref, None, None
    ref = _timm_pico(4, num_classes=10)  # timm weights with their classifier head, as safetensors
    path = tmp_path / "model.safetensors"
    save_file(ref.state_dict(), path)
    ref.reset_classifier(0)
    return path, ref, None, None


@pytest.mark.parametrize("kind", ["sparsedino", "dino", "dino_backbone", "state_dict"])
def test_initialising_from_each_kind_reproduces_its_features_at_step_0(
    kind, image_root, tmp_path, tiny_overrides
):
    path, ref, head, center = _source(kind, tmp_path, image_root, tiny_overrides)
    overrides = tiny_overrides(
        image_root, tmp_path / "run", f"init.checkpoint={path}", "model.normalizer=softmax"
    )
    trainer = Trainer(load_train_config("dino_cpu_tiny", overrides), DistInfo())
    try:
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            expected = ref(x)
            for net in (trainer.nets.student, trainer.nets.teacher):
                assert torch.equal(net.backbone.eval()(x), expected)  # bit for bit, softmax attention
                if head is not None:  # full checkpoints: the DINO head and the loss centre too
                    assert all(torch.equal(v, head[k]) for k, v in net.head.state_dict().items())
        if center is not None:
            assert torch.equal(trainer.loss_fn.center, center)
        else:
            assert not trainer.loss_fn.center.any()
        recorded = trainer.cfg.init
        assert recorded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert recorded.kind == {"dino_backbone": "state_dict"}.get(kind, kind)
        written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["init"]
        assert (written["checkpoint"], written["sha256"]) == (str(path), recorded.sha256)
    finally:
        trainer.close()


def test_an_initialised_entmax_run_records_its_source_in_every_checkpoint(
    image_root, tmp_path, tiny_overrides
):
    ref = _timm_pico(5, num_classes=0)
    torch.save(ref.state_dict(), tmp_path / "src.pth")
    out = tmp_path / "run"
    run_training(load_train_config("dino_cpu_tiny", tiny_overrides(
        image_root, out, f"init.checkpoint={tmp_path / 'src.pth'}", "model.normalizer=entmax15",
        "optim.epochs=1", "run.max_iters_per_epoch=1", "run.checkpoint_every_epochs=1")))  # fmt: skip
    digest = hashlib.sha256((tmp_path / "src.pth").read_bytes()).hexdigest()
    for name in ("checkpoint.pth", "checkpoint_epoch0000.pth", "checkpoint_epoch0001.pth"):
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["sparsedino"]["init"] == {"checkpoint": str(tmp_path / "src.pth"), "sha256": digest,
                                              "kind": "state_dict", "which": "teacher", "head": False,
                                              "source_epoch": None}  # fmt: skip
        assert ckpt["args"]["init"]["sha256"] == digest
    model, info = load_backbone(out / "checkpoint_epoch0000.pth")  # the source's weights, now with entmax
    assert info.normalizer == "entmax15"
    for key, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_a_mismatched_architecture_is_one_line_naming_keys_and_shapes(image_root, tmp_path, tiny_overrides):
    torch.save(_timm_pico(0, num_classes=0).state_dict(), tmp_path / "pico.pth")
    out = tmp_path / "run"
    cfg = load_train_config("dino_cpu_tiny", tiny_overrides(
        image_root, out, f"init.checkpoint={tmp_path / 'pico.pth'}", "model.arch=vit_femto"))  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        run_training(cfg)
    message = str(err.value)
    assert "\n" not in message and "pico.pth" in message and "model.arch=vit_femto" in message
    assert "pos_embed (1, 17, 48) in the file vs (1, 17, 32) here" in message
    assert "not in the model: blocks.3" not in message and "missing in the file: blocks.3." in message
    assert not (out / "config.yaml").exists()  # refused before anything was written
    registers = tiny_overrides(
        image_root, out, f"init.checkpoint={tmp_path / 'pico.pth'}", "model.num_registers=4"
    )
    with pytest.raises(CheckpointError, match=r"missing in the file: reg_token"):
        run_training(load_train_config("dino_cpu_tiny", registers))


def test_head_of_another_shape_is_refused_and_a_wrong_hash_or_kind_too(image_root, tmp_path, tiny_overrides):
    torch.manual_seed(0)
    net = MultiCropWrapper(
        build_vit("vit_pico", patch_size=8, img_size=32), DINOHead(48, 128, hidden_dim=64, bottleneck_dim=32)
    )
    torch.save({"teacher": net.state_dict(), "student": net.state_dict()}, tmp_path / "full.pth")
    src = f"init.checkpoint={tmp_path / 'full.pth'}"
    with pytest.raises(
        CheckpointError,
        match=r"its head does not fit.*out_dim=64.*last_layer\.weight_v \(128, 32\) in the file vs \(64, 32\) here",
    ):
        run_training(load_train_config("dino_cpu_tiny", tiny_overrides(image_root, tmp_path / "a", src)))
    # init.head=false: the backbone alone, the head starts fresh
    trainer = Trainer(
        load_train_config(
            "dino_cpu_tiny", tiny_overrides(image_root, tmp_path / "b", src, "init.head=false")
        ),
        DistInfo(),
    )
    trainer.close()
    with pytest.raises(CheckpointError, match=r"SHA-256 [0-9a-f]{64}, not init\.sha256 (ab){32}"):
        run_training(
            load_train_config(
                "dino_cpu_tiny", tiny_overrides(image_root, tmp_path / "c", src, "init.sha256=" + "ab" * 32)
            )
        )
    with pytest.raises(
        CheckpointError,
        match=r"is a 'dino' file, not init\.kind 'state_dict'",
    ):
        run_training(
            load_train_config(
                "dino_cpu_tiny",
                tiny_overrides(image_root, tmp_path / "d", src, "init.kind=state_dict", "init.head=false"),
            )
        )
    with pytest.raises(CheckpointError, match=r"init\.checkpoint .*nothere\.pth.* does not exist"):
        run_training(
            load_train_config(
                "dino_cpu_tiny",
                tiny_overrides(image_root, tmp_path / "e", f"init.checkpoint={tmp_path / 'nothere.pth'}"),
            )
        )
