"""Export metadata stored inside a ``.pth`` state dict, and how it combines with the ``.json`` sidecar.

``sparsedino export`` writes a bare state dict (what ``torch.load`` and timm's ``load_state_dict`` expect)
and records its metadata (arch, normaliser, attention scale, ...) twice: in the ``FILE.pth.json`` sidecar
and in the state dict's ``_metadata``, the per-module record that ``torch.nn.Module.state_dict`` keeps and
``load_state_dict`` passes on (unknown entries are ignored). A file copied without its sidecar therefore
still loads with its own attention, never silently as softmax; a sidecar that contradicts the file it sits
beside (left over from another export) is refused.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EMBEDDED_KEY = "sparsedino"  # entry of the root module's record (``_metadata[""]``)
# Metadata that decides how the backbone is rebuilt: the sidecar and the file must agree on these.
_DECISIVE = ("arch", "patch_size", "num_heads", "num_registers", "normalizer", "attn_scale")


def with_embedded_metadata(state: dict, module_metadata: Any, meta: dict) -> OrderedDict:
    """``state`` as an ordered state dict whose ``_metadata`` (the model's own ``module_metadata``) also
    records ``meta`` as JSON for the root module."""
    out = OrderedDict(state)
    records = OrderedDict((key, dict(value)) for key, value in (module_metadata or {}).items())
    records.setdefault("", {})[EMBEDDED_KEY] = json.dumps(meta)
    out._metadata = records  # type: ignore[attr-defined]
    return out


def embedded_metadata(obj: Any) -> dict:
    """The export metadata stored inside a loaded state dict ({} when there is none)."""
    records = getattr(obj, "_metadata", None)
    root = records.get("", {}) if isinstance(records, dict) else {}
    text = root.get(EMBEDDED_KEY) if isinstance(root, dict) else None
    if not isinstance(text, str):
        return {}
    try:
        meta = json.loads(text)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def file_metadata(obj: Any, sidecar_meta: dict | None, sidecar: Path, path: Path) -> tuple[dict, str | None]:
    """The metadata of a loaded file: its sidecar's, checked against what the file itself records.

    Args:
        obj: the loaded object (an export's state dict carries embedded metadata).
        sidecar_meta: the sidecar's JSON object, or None when there is no sidecar.
        sidecar, path: the two files, for messages.

    Returns:
        ``(meta, problem)``: the metadata to use, and why the sidecar cannot be trusted (it contradicts the
        file's own record, so it belongs to another export), or None.
    """
    inside = embedded_metadata(obj)
    if sidecar_meta is None:
        if inside:
            log.warning("%s has no sidecar %s; using the metadata stored inside the file", path, sidecar.name)
        return inside, None
    differ = [key for key in _DECISIVE if key in inside and inside[key] != sidecar_meta.get(key)]
    if not differ:
        return sidecar_meta, None
    detail = ", ".join(
        f"{k} {inside[k]!r} in the file, {sidecar_meta.get(k)!r} in the sidecar" for k in differ
    )
    return sidecar_meta, (
        f"metadata sidecar {str(sidecar)!r} does not describe {str(path)!r} ({detail}); it was left by "
        "another export: delete it or export again"
    )
