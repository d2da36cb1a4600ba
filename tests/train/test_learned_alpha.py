"""``model.learn_alpha``: config rule, the ViT builder, training, checkpoints, resume and load_backbone."""

from __future__ import annotations

import pytest
import torch

from sparsedino.attention.layers import learned_alphas
from sparsedino.config import ConfigError
from sparsedino.models import build_vit, load_backbone
from sparsedino.pipeline.alphas import checkpoint_alphas
from sparsedino.train import load_train_config, run_training
from sparsedino.train.distributed import DistInfo
from sparsedino.train.loop import Trainer
from sparsedino.train.schedules import param_groups


def test_learn_alpha_needs_an_entmax_normalizer_naming_the_key(image_root, tmp_path, tiny_overrides):
    for normalizer in ("softmax", "entmax1"):  # entmax with alpha 1 is softmax
        overrides = tiny_overrides(
            image_root, tmp_path, "model.learn_alpha=true", f"model.normalizer={normalizer}"
        )
        with pytest.raises(ConfigError, match=r"model\.learn_alpha"):
            load_train_config("dino_cpu_tiny", overrides)
    cfg = load_train_config("dino_cpu_tiny", tiny_overrides(image_root, tmp_path, "model.learn_alpha=true"))
    assert cfg.model.learn_alpha and cfg.model.normalizer == "entmax15"


def test_builder_adds_one_alpha_per_head_without_weight_decay():
    model = build_vit("vit_pico", patch_size=8, img_size=32, learn_alpha=True)
    keys = [k for k in model.state_dict() if k.endswith("attn.alpha")]
    assert keys == [f"blocks.{i}.attn.alpha" for i in range(3)]
    assert learned_alphas(model) == [[1.5] * 3] * 3
    no_decay = {id(p) for p in param_groups(model)[1]["params"]}
    assert all(id(b.attn.alpha) in no_decay for b in model.blocks)
    assert learned_alphas(build_vit("vit_pico", patch_size=8, img_size=32)) is None
    with pytest.raises(ValueError, match="softmax"):
        build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax", learn_alpha=True)


def _alphas(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix) and k.endswith("attn.alpha")}


@pytest.mark.slow
def test_tiny_run_learns_alphas_checkpoints_and_resumes_them(image_root, tmp_path, tiny_overrides):
    out = tmp_path / "run"
    extra = ("model.learn_alpha=true", "run.max_iters_per_epoch=2", "optim.lr=0.05")
    run_training(
        load_train_config("dino_cpu_tiny", tiny_overrides(image_root, out, *extra, "optim.epochs=1"))
    )
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["sparsedino"]["learn_alpha"] is True
    student = _alphas(ckpt["student"], "backbone.")
    assert len(student) == 3 and all(not torch.equal(a, torch.full((3,), 1.5)) for a in student.values())

    # Resume for a second epoch: the restored networks hold exactly the checkpoint's alphas.
    trainer = Trainer(load_train_config("dino_cpu_tiny", tiny_overrides(image_root, out, *extra)), DistInfo())
    try:
        for net, name in ((trainer.nets.student, "student"), (trainer.nets.teacher, "teacher")):
            restored = _alphas(net.state_dict(), "backbone.")
            assert restored.keys() == _alphas(ckpt[name], "backbone.").keys()
            assert all(torch.equal(v, ckpt[name][k]) for k, v in restored.items())
        trainer.fit()
    finally:
        trainer.close()
    final = torch.load(out / "checkpoint.pth", weights_only=True)
    assert final["epoch"] == 2
    assert all(not torch.equal(final["student"][k], v) for k, v in student.items())  # still learning

    # load_backbone rebuilds the teacher with its learned alphas; a given normaliser replaces them.
    model, info = load_backbone(out / "checkpoint.pth")
    assert info.normalizer == "entmax15"
    assert learned_alphas(model) == checkpoint_alphas(out / "checkpoint.pth")
    assert learned_alphas(load_backbone(out / "checkpoint.pth", normalizer="softmax")[0]) is None
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 48)


def test_checkpoints_written_before_the_key_existed_still_resume(image_root, tmp_path, tiny_overrides):
    out = tmp_path / "old"
    run_training(load_train_config("dino_cpu_tiny", tiny_overrides(image_root, out, "optim.epochs=1")))
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    del ckpt["args"]["model"]["learn_alpha"]  # as written by a version without the key
    torch.save(ckpt, out / "checkpoint.pth")
    trainer = Trainer(load_train_config("dino_cpu_tiny", tiny_overrides(image_root, out)), DistInfo())
    trainer.close()
    assert trainer.epoch == 1  # resumed, not refused
    with pytest.raises(ConfigError, match=r"model"):  # a real difference is still refused
        Trainer(
            load_train_config("dino_cpu_tiny", tiny_overrides(image_root, out, "model.learn_alpha=true")),
            DistInfo(),
        )
