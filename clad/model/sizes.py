"""Named size presets and parameter accounting.

    model_preset("paper" | "cpu" | "tiny") -> ModelConfig
    parameter_breakdown(model) -> {module name: count}
    python -m clad.model.sizes paper      # prints the breakdown

`paper`: H = 1024, N = 4, tau = 6 [paper]; depths and U-Net widths are ours, chosen so that the stage-1
dynamics model is ~0.33B and the stage-2 policy ~0.23B trainable parameters (the paper's 0.66B minus the
~0.1B frozen DecisionNCE). It runs the DecisionNCE RN50 image tower (frozen, from vision.checkpoint_dir,
or precomputed `feat_*` features when that is unset).
`cpu`: a policy for one LIBERO task should learn on 2 CPU cores in well under an hour.
`tiny`: unit tests.
"""

from __future__ import annotations

from torch import nn

from clad.model.config import DynamicsConfig, ModelConfig, PolicyConfig, VisionConfig

PRESETS = ("paper", "cpu", "tiny")


def model_preset(name: str) -> ModelConfig:
    if name == "paper":
        return ModelConfig(
            vision=VisionConfig(backbone="decisionnce_rn50", cameras=("agentview",), image_size=224, feature_dim=1024),
            dynamics=DynamicsConfig(
                hidden_dim=1024, num_tokens=4, tau=6, num_heads=16, transition_layers=8, cross_layers=8, pool_layers=1
            ),
            policy=PolicyConfig(chunk_length=6, down_dims=(512, 1024, 1536), step_embed_dim=256),
        )
    if name == "cpu":
        return ModelConfig(
            vision=VisionConfig(
                backbone="cnn",
                cameras=("agentview", "eye_in_hand"),
                image_size=64,
                crop_ratio=0.9,
                feature_dim=64,
                cnn_channels=(16, 32, 64),
                cnn_keypoints=32,
                recon_image_size=16,
            ),
            dynamics=DynamicsConfig(
                hidden_dim=128, num_tokens=4, tau=6, num_heads=4, transition_layers=2, cross_layers=2, pool_layers=1
            ),
            policy=PolicyConfig(
                chunk_length=6, down_dims=(64, 128, 256), step_embed_dim=64, num_inference_steps=10
            ),
        )
    if name == "tiny":
        return ModelConfig(
            vision=VisionConfig(
                backbone="cnn", image_size=32, feature_dim=16, cnn_channels=(8, 16), cnn_groups=4, cnn_keypoints=8,
                recon_image_size=4,
            ),  # fmt: skip
            dynamics=DynamicsConfig(
                hidden_dim=32, num_tokens=2, tau=3, num_heads=2, transition_layers=1, cross_layers=1, pool_layers=1
            ),
            policy=PolicyConfig(
                chunk_length=4, execution_horizon=2, down_dims=(16, 32), step_embed_dim=16, n_groups=4,
                num_train_timesteps=20, num_inference_steps=4,
            ),  # fmt: skip
        )
    raise ValueError(f"unknown model preset {name!r}: choose one of {PRESETS}")


def count(module: nn.Module | None, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameter counts per module of a CladModel. Totals:
    `dynamics_total` = stage-1 model without EMA targets and without the visual backbone;
    `policy_total` = stage-2 trainable modules; `vision` = the backbone (frozen unless cnn)."""
    d, p = model.dynamics, model.policy
    out: dict[str, int] = {"vision": count(model.vision)}
    if d is not None:
        parts = {
            "dynamics.encoders (f_p, f_s, lang FiLM)": count(d.encoders),
            "dynamics.f_a (action tokens)": count(d.f_a),
            "dynamics.transitions (p, s)": count(d.proprio_transition) + count(d.semantic_transition),
            "dynamics.cross": count(d.cross) + (d.modality_emb.numel() if hasattr(d, "modality_emb") else 0),
            "dynamics.pool (q_out)": count(d.pool),
            "dynamics.heads (g_p, g_s)": count(d.g_p) + count(d.g_s),
            "dynamics.decoders (h_p, h_s)": count(getattr(d, "h_p", None)) + count(getattr(d, "h_s", None)),
        }
        out.update(parts)
        out["dynamics_total"] = sum(parts.values())
        out["dynamics.target_encoders (EMA, not counted)"] = count(d.target_encoders)
    pparts = {
        "policy.obs_encoders (e_p, e_s)": count(p.obs_encoders),
        "policy.film": count(p.film_p) + count(p.film_s),
        "policy.unet": count(p.unet),
        "policy.vision (own CNN)": count(p.vision),
    }
    out.update(pparts)
    out["policy_total"] = sum(pparts.values())
    return out


def format_breakdown(counts: dict[str, int]) -> str:
    width = max(len(k) for k in counts)
    return "\n".join(f"{k:<{width}}  {v / 1e6:10.3f} M" for k, v in counts.items())


def main(argv: list[str] | None = None) -> None:
    import argparse

    import torch

    from clad.model.model import CladModel

    parser = argparse.ArgumentParser(prog="python -m clad.model.sizes",
                                     description="parameter breakdown of model presets (nothing is allocated)")
    parser.add_argument("presets", nargs="*", metavar="PRESET",
                        help=f"presets to count (default: all of {', '.join(PRESETS)})")
    names = parser.parse_args(argv).presets or PRESETS
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        parser.error(f"unknown preset {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    for name in names:
        with torch.device("meta"):  # count only: nothing is allocated
            model = CladModel(model_preset(name))
        print(f"== {name}")  # noqa: T201
        print(format_breakdown(parameter_breakdown(model)))  # noqa: T201


if __name__ == "__main__":
    main()
