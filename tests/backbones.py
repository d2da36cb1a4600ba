"""Tiny foreign backbones saved the way users bring them: timm state dicts (timm's or the original release's
key layout) and transformers ``save_pretrained`` folders, all random weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

# timm names of the issue and the shrunk shape each is built with (random weights, tiny inputs)
TIMM_TINY = {
    "vit_small_patch14_reg4_dinov2": {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 56},
    "vit_small_patch16_dinov3": {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64},
    "vit_small_patch14_dinov2": {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 56},
}


def timm_spec(name: str, path: Path) -> str:
    """``timm:NAME,depth=2,...:PATH`` for a name of :data:`TIMM_TINY`."""
    kwargs = "".join(f",{k}={v}" for k, v in TIMM_TINY[name].items())
    return f"timm:{name}{kwargs}:{path}"


def tiny_timm(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=0, **TIMM_TINY[name]).eval()


def original_layout(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of timm's ``checkpoint_filter_fn``: the keys of the official DINOv2 / DINOv3 releases."""
    state = dict(state)
    width = state["cls_token"].shape[-1]
    state["mask_token"] = torch.zeros(1, width)  # pretraining only: the filters drop it
    if "dinov3" in name:
        renames = (("reg_token", "storage_tokens"), ("gamma_1", "ls1.gamma"), ("gamma_2", "ls2.gamma"))
        for old, new in renames:
            state = {k.replace(old, new): v for k, v in state.items()}
        return state
    if "reg_token" in state:  # DINOv2 + registers: [CLS] has a position in the original
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat([torch.zeros(1, 1, width), state["pos_embed"]], 1)
    return state


def write_timm(name: str, folder: Path, layout: str = "timm", suffix: str = ".safetensors", seed: int = 0):
    """Save a tiny ``name`` model's weights; returns ``(model, spec)``."""
    model = tiny_timm(name, seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "original":
        state = original_layout(name, state)
    path = Path(folder) / f"{name}-{layout}{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    return model, timm_spec(name, path)


def hf_config(kind: str):
    """A transformers config of hidden size 32 and 2 layers for ``kind`` (a model type of HF_FAMILIES)."""
    transformers = pytest.importorskip("transformers")
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    if kind in ("vit", "deit"):
        cls = transformers.ViTConfig if kind == "vit" else transformers.DeiTConfig
        return cls(**common, intermediate_size=64, image_size=32, patch_size=8)
    if kind == "dinov2":
        return transformers.Dinov2Config(**common, mlp_ratio=2, image_size=28, patch_size=14)
    if kind == "dinov2_with_registers":
        return transformers.Dinov2WithRegistersConfig(
            **common, mlp_ratio=2, image_size=28, patch_size=14, num_register_tokens=4
        )
    return transformers.DINOv3ViTConfig(
        **common, intermediate_size=64, image_size=32, patch_size=16, num_register_tokens=4
    )


def write_hf(kind: str, folder: Path, seed: int = 0, preprocessor: dict | None = None):
    """``save_pretrained`` a tiny model of ``kind`` into ``folder``; returns ``(model, "hf:FOLDER")``."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(hf_config(kind)).eval()
    model.save_pretrained(folder)
    if preprocessor is not None:
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model, f"hf:{folder}"
