"""Which ViT families the commands take: sparsify, attention maps, diagnose, eval seg and eval video, each run.

For every family a tiny random-weight model (2 blocks, width 64, 2 heads; transformers: hidden 32) is saved
as a user would (a timm state dict, a ``save_pretrained`` folder) and read back through its backbone spec;
then, on the embedded data:

    sparsify   sparsedino.attention.sparsify(model, "entmax15") on the loaded model
    maps       collect_attention(model) after sparsify(model, "softmax"): one (B, H, N, N) map per block
    diagnose   sparsedino diagnose --checkpoint SPEC (img_size = 4 patches, 8 images, no dense probe)
    seg        sparsedino eval seg --checkpoint SPEC (3 probe steps, crop = 2 patches)
    video      sparsedino eval video --checkpoint SPEC (one 3-frame clip, short side = 2 patches)

Each cell is ``ok`` or the first line of the error (exit code 2 = a one-line user error). Usage:

    PYTHONPATH=<repo> python tools/backbone_matrix.py [--out matrix.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from sparsedino.attention import collect_attention, sparsify
from sparsedino.data.synthetic import write_synthetic_dataset
from sparsedino.data.synthetic_video import write_synthetic_videos
from sparsedino.diagnose.command import main as diagnose_main
from sparsedino.eval.command import main as eval_main
from sparsedino.models import load_backbone, token_layout

SHRUNK = {"depth": 2, "embed_dim": 64, "num_heads": 2}
# family label -> timm name and the input size its tiny model is built for
TIMM_FAMILIES = {
    "ViT (timm Attention)": ("vit_small_patch16_224", 64),
    "DeiT III (LayerScale)": ("deit3_small_patch16_224", 64),
    "DINOv2": ("vit_small_patch14_dinov2", 56),
    "DINOv2 + 4 registers": ("vit_small_patch14_reg4_dinov2", 56),
    "SigLIP (no [CLS], attention pool)": ("vit_base_patch16_siglip_224", 64),
    "DINOv3 (Eva, RoPE, 4 registers)": ("vit_small_patch16_dinov3", 64),
    "EVA-02 (Eva, RoPE)": ("eva02_tiny_patch14_224", 56),
    "RoPE ViT (AttentionRope)": ("vit_small_patch16_rope_224", 64),
    "RoPE ViT, 1 register, no [CLS] (Eva)": ("vit_medium_patch16_rope_reg1_gap_256", 64),
    "BEiT (relative position bias)": ("beit_base_patch16_224", 64),
    "SAM ViT (windowed attention)": ("samvit_base_patch16", 64),
}
HF_FAMILIES = ("vit", "deit", "dinov2", "dinov2_with_registers", "dinov3_vit")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:160]


def _timm_spec(name: str, size: int, folder: Path) -> str:
    kwargs = {**SHRUNK, "img_size": size}
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return f"timm:{name}," + ",".join(f"{k}={v}" for k, v in kwargs.items()) + f":{path}"


def _hf_spec(kind: str, folder: Path) -> tuple[str, int]:
    import transformers

    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    configs = {
        "vit": lambda: transformers.ViTConfig(**common, intermediate_size=64, image_size=32, patch_size=8),
        "deit": lambda: transformers.DeiTConfig(**common, intermediate_size=64, image_size=32, patch_size=8),
        "dinov2": lambda: transformers.Dinov2Config(**common, mlp_ratio=2, image_size=28, patch_size=14),
        "dinov2_with_registers": lambda: transformers.Dinov2WithRegistersConfig(
            **common, mlp_ratio=2, image_size=28, patch_size=14, num_register_tokens=4
        ),
        "dinov3_vit": lambda: transformers.DINOv3ViTConfig(
            **common, intermediate_size=64, image_size=32, patch_size=16, num_register_tokens=4
        ),
    }
    config = configs[kind]()
    transformers.AutoModel.from_config(config).save_pretrained(folder / kind)
    return f"hf:{folder / kind}", int(config.patch_size)


def _command(run, argv: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = run(argv)
        except Exception as exc:  # a bug rather than a user error: reported in the cell
            return _first_line(exc)
    lines = [line for line in err.getvalue().splitlines() if "error:" in line]
    return "ok" if code == 0 else f"exit {code}: {lines[-1].split('error: ', 1)[1] if lines else ''}"[:160]


def run_family(spec: str, patch: int, data: Path, clips: Path, out: Path) -> dict[str, str]:
    row: dict[str, str] = {}
    try:
        model, _ = load_backbone(spec)
        token_layout(model)
        row["load"] = "ok"
    except Exception as exc:
        return {"load": _first_line(exc)}
    x = torch.randn(2, 3, 4 * patch, 4 * patch)
    for column, normalizer in (("sparsify", "entmax15"), ("maps", "softmax")):
        try:
            sparsify(model, normalizer)
            if column == "maps":
                with torch.no_grad(), collect_attention(model) as maps:
                    model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
                assert len(maps) == 2 and maps[0].dim() == 4, f"{len(maps)} maps"
            row[column] = "ok"
        except Exception as exc:
            row[column] = _first_line(exc)
    row["diagnose"] = _command(diagnose_main, ["--checkpoint", spec, "--data", str(data), "--out", str(out / "d"),
                                               f"img_size={4 * patch}", "n_images=8", "batch_size=8",
                                               "dense_probe.enabled=false", "label_probe_iterations=5",
                                               "n_figure_images=1", "--no-progress"])  # fmt: skip
    row["seg"] = _command(eval_main, ["seg", "--checkpoint", spec, "--data", str(data), "--out", str(out / "s"),
                                      f"crop_size={2 * patch}", f"eval_stride={patch}", "iters=3", "batch_size=4",
                                      "warmup_iters=1", "eval_short_side=0", "max_val_images=3",
                                      "max_train_images=8", "features.device=cpu"])  # fmt: skip
    row["video"] = _command(eval_main, ["video", "--checkpoint", spec, "--data", str(clips), "--out", str(out / "v"),
                                        f"short_side={2 * patch}", f"size_multiple={patch}", "device=cpu",
                                        "size_mask_neighborhood=1"])  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the matrix as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    matrix = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, clips = tmp / "data", tmp / "clips"
        write_synthetic_dataset(data, n_train=8, n_val=8, size=64, num_classes=3)
        write_synthetic_videos(clips, clips=1, frames=3, size=64, seed=0, num_classes=3)
        families = [(label, "timm", name, size) for label, (name, size) in TIMM_FAMILIES.items()]
        families += [(f"transformers {kind}", "hf", kind, 0) for kind in HF_FAMILIES]
        for label, source, name, size in families:
            folder = tmp / name
            folder.mkdir()
            try:
                if source == "timm":
                    spec, patch = _timm_spec(name, size, folder), timm.create_model(name, pretrained=False, **SHRUNK,
                                                                                    img_size=size).patch_embed.patch_size[0]  # fmt: skip
                else:
                    spec, patch = _hf_spec(name, folder)
                row = run_family(spec, int(patch), data, clips, folder)
            except Exception as exc:  # the model cannot even be built shrunk
                row = {"load": _first_line(exc)}
            matrix[label] = {"model": name, **row}
            print(
                f"{label:40s} " + "  ".join(f"{k}={v if v == 'ok' else 'FAIL'}" for k, v in row.items()),
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps(matrix, indent=2) + "\n")


if __name__ == "__main__":
    main()
