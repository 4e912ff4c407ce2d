"""Convert an official DecisionNCE checkpoint (.pth) to the backbone folder `vision.backbone=decisionnce_rn50` reads.

    python -m clad.model.decisionnce_convert DecisionNCE-P.pth weights/decisionnce_p

Upstream (github.com/2toinf/DecisionNCE, DecisionNCE/model.py) wraps OpenAI CLIP RN50 as `CLIPBasedEncoder`
with the CLIP model in `self.model`, so its state dict holds `model.visual.*` (image tower) and
`model.transformer.*`, `model.token_embedding.*`, ... (text tower); `DecisionNCE.load` accepts the dict
itself or one nested under a `model` key. DDP checkpoints add a `module.` prefix.

The file is read with `torch.load(weights_only=True)`: only tensors and plain containers are unpickled,
never arbitrary code; a file that needs more is refused. The output folder holds `model.safetensors` (the
image tower, keys `visual.*`) and `config.json` (the architecture, inferred from the tensor shapes).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from clad.errors import CheckpointError

VISUAL = "visual."


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a DecisionNCE .pth, unpickled with weights_only=True (no code execution)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as err:  # weights_only refuses pickled classes/functions: never run them
        raise CheckpointError(f"{path} cannot be read as plain tensors (torch.load weights_only=True: "
                              f"{str(err).splitlines()[0]}); export its state_dict with plain torch.save first") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a training checkpoint: {'model': state_dict, ...}, as DecisionNCE.load accepts
    if not isinstance(obj, dict) or not any(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items() if torch.is_tensor(v)}


def visual_tower(state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The image tower's tensors, renamed to `visual.<CLIP name>`."""
    out = {VISUAL + k.split(VISUAL, 1)[1]: v for k, v in state.items() if VISUAL in k}
    if not out:
        raise CheckpointError(f"{source} has no '...visual.*' tensors (the CLIP image tower); keys start with "
                              f"{sorted({k.split('.')[0] for k in state})[:8]}")
    return out


def infer_config(visual: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """ModifiedResNet hyper-parameters from tensor shapes (as OpenAI CLIP's build_model does)."""
    try:
        width = int(visual["visual.conv1.weight"].shape[0]) * 2
        layers = [len({m.group(1) for k in visual if (m := re.match(rf"visual\.layer{i}\.(\d+)\.", k))})
                  for i in (1, 2, 3, 4)]
        output_dim = int(visual["visual.attnpool.c_proj.weight"].shape[0])
        spacial = round((visual["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    except KeyError as err:
        raise CheckpointError(f"{source}: no tensor {err}; is this a CLIP ResNet (RN50) image tower?") from None
    if not all(layers):
        raise CheckpointError(f"{source}: the image tower has no blocks in some of layer1..4 ({layers}): not a ResNet")
    return {"layers": layers, "width": width, "heads": width * 32 // 64, "output_dim": output_dim,
            "image_size": spacial * 32}


def convert(src: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir/model.safetensors` + `config.json`, then load them back with the project's loader to check."""
    from clad.model.clip_rn50 import load_clip_rn50

    visual = visual_tower(read_state_dict(src), str(src))
    cfg = infer_config(visual, str(src))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().float() for k, v in visual.items()}, str(out / "model.safetensors"),
              metadata={"source": Path(src).name, "converter": "clad.model.decisionnce_convert"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    load_clip_rn50(str(out))  # strict load: every tensor fits the inferred architecture
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the official DecisionNCE .pth (e.g. DecisionNCE-P)")
    p.add_argument("out", help="output folder (model.safetensors + config.json)")
    args = p.parse_args(argv)
    try:
        out = convert(args.checkpoint, args.out)
    except CheckpointError as err:
        print(f"decisionnce_convert: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}: use vision.backbone=decisionnce_rn50 vision.checkpoint_dir={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
