"""Builders for tiny random-init models, saved in the standard formats their libraries load.

Nothing can be downloaded at run time on the machines this project is tested on, so the demo and
the tests build small models locally. They load through exactly the code paths real checkpoints
use (open_clip's ``local-dir:`` folder here), so pointing a setting at a real checkpoint is the
only change a user makes. Outputs of random models are random: tests assert plumbing with them.
"""

from __future__ import annotations

import json
from pathlib import Path

# A ~3.4M-parameter CLIP (3.2M of it the token embedding): ViT with 64-px input and 16-px patches, 2-layer text tower, BPE tokenizer
# of open_clip (shipped inside the package, so no download).
TINY_CLIP_CFG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Create a random-init open_clip model in ``out_dir`` (open_clip_config.json + safetensors).

    Load it with ``open_clip.create_model_and_transforms('local-dir:' + out_dir)``. Idempotent: an
    existing complete folder is left as it is.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    weights = out / "open_clip_model.safetensors"
    config = out / "open_clip_config.json"
    if weights.exists() and config.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    tmp_w, tmp_c = out / ".tmp-weights.safetensors", out / ".tmp-config.json"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_w))
    tmp_c.write_text(json.dumps({"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": preprocess}, indent=2))
    tmp_w.rename(weights)
    tmp_c.rename(config)
    return out
