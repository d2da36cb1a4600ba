"""The DINO projection head and the multi-crop wrapper that feeds crops through backbone + head.

The head's last layer is weight-normalised with ``torch.nn.utils.parametrizations.weight_norm`` (the
supported API), but its state dict uses the official DINO layout ``last_layer.weight_g`` /
``last_layer.weight_v`` (the old ``torch.nn.utils.weight_norm`` names), so our checkpoints and the
released DINO checkpoints are interchangeable. The conversion happens in state-dict hooks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

_PARAM_G = "last_layer.parametrizations.weight.original0"
_PARAM_V = "last_layer.parametrizations.weight.original1"
_OFFICIAL_G = "last_layer.weight_g"
_OFFICIAL_V = "last_layer.weight_v"


def _to_official(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post hook: rename parametrization keys to ``weight_g`` / ``weight_v``."""
    for ours, official in ((_PARAM_G, _OFFICIAL_G), (_PARAM_V, _OFFICIAL_V)):
        if prefix + ours in state_dict:
            state_dict[prefix + official] = state_dict.pop(prefix + ours)


def _from_official(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre hook: accept ``weight_g`` / ``weight_v`` (and the parametrization names)."""
    for ours, official in ((_PARAM_G, _OFFICIAL_G), (_PARAM_V, _OFFICIAL_V)):
        if prefix + official in state_dict:
            state_dict[prefix + ours] = state_dict.pop(prefix + official)


class DINOHead(nn.Module):
    """DINO projection head: MLP -> bottleneck -> L2 normalise -> weight-normalised linear to ``out_dim``.

    Args:
        in_dim: backbone embedding width.
        out_dim: number of prototypes (DINO: 65536).
        use_bn: BatchNorm after the hidden linear layers.
        norm_last_layer: fix the weight-norm magnitude ``g`` to 1 (more stable; DINO's boosted ViT-S
            recipe turns it off).
        nlayers: linear layers in the MLP (>= 1).
        hidden_dim: MLP width.
        bottleneck_dim: width before the L2 normalisation.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        # g = 1 at init, like DINO; with norm_last_layer it stays 1 (no gradient).
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False
        self.register_state_dict_post_hook(_to_official)
        self.register_load_state_dict_pre_hook(_from_official)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim) logits (before temperature)."""
        x = self.mlp(x)  # (B, bottleneck_dim)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """Run a list of crops through ``backbone`` then ``head``, one backbone pass per resolution.

    Consecutive crops of the same size are concatenated along the batch so e.g. the 2 global and the
    8 local crops cost two backbone forwards. The outputs are concatenated in the input order:
    ``(n_crops * B, out_dim)``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self, crops: torch.Tensor | Sequence[torch.Tensor], patches_of: int = 0
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Head outputs ``(n_crops * B, out_dim)``; with ``patches_of = n`` also the patch tokens (after the
        final norm) of the first ``n`` crops from the same forward, ``(n * B, P, embed_dim)`` (Gram anchoring).
        """
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        outputs: list[torch.Tensor] = []
        patches = None
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            x = torch.cat(list(crops[start:end]))
            if start == 0 and patches_of:
                if end < patches_of:
                    raise ValueError(
                        f"the first {patches_of} crops must share one size for their patch tokens"
                    )
                tokens = self.backbone.forward_features(x)  # (k * B, N, C): what backbone(x) pools
                patches = tokens[: patches_of * crops[0].shape[0], self.backbone.num_prefix_tokens :]
                outputs.append(self.backbone.forward_head(tokens))
            else:
                outputs.append(self.backbone(x))  # (k * B, embed_dim)
            start = end
        out = self.head(torch.cat(outputs))
        return (out, patches) if patches_of else out
