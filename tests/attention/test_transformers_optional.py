"""transformers is optional: the package, its CLI and timm models work where it cannot be imported.

Runs where transformers is not installed too (no importorskip): a subprocess makes ``import transformers``
fail, as it does without the package, and uses the core package.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["transformers"] = None  # any `import transformers` now raises ImportError

    import timm
    import torch

    import sparsedino
    import sparsedino.cli
    from sparsedino.attention import collect_attention, sparsify
    from sparsedino.attention.hf_detect import contains_transformers_model

    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, embed_dim=48, depth=2, num_heads=3
    )
    assert not contains_transformers_model(model)
    sparsify(model, "entmax15")
    with collect_attention(model) as maps:
        model(torch.randn(1, 3, 32, 32))
    assert len(maps) == 2
    try:
        import sparsedino.attention.hf
    except ImportError as error:
        print("hf:", error)
    """
)


def test_core_package_works_without_transformers():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "hf: sparsedino.attention.hf needs Hugging Face transformers >= 5.18" in result.stdout
    assert "pip install 'sparsedino[hf]'" in result.stdout
