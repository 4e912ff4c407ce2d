"""Shapes through every model module, the normaliser, masking rate and the EMA formula (tiny sizes, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from clad.model import model_preset
from clad.model.attention import AttentionStack, LearnedQueryPool
from clad.model.dynamics import ema_update
from clad.model.film import FiLM
from clad.model.normalizer import Normalizer
from clad.model.tokenizers import ActionTokenizer, StateTokenizer
from clad.model.unet1d import ConditionalUnet1D
from clad.model.image_ops import crop, downsample_images
from clad.model.vision import VisionEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_film_starts_as_identity_and_learns_condition():
    film = FiLM(8, 5)
    x, c = torch.randn(3, 8), torch.randn(3, 5)
    assert torch.equal(film(x, c), x)
    film.net[-1].bias.data.normal_()
    assert film(x, c).shape == (3, 8) and not torch.equal(film(x, c), x)


def test_attention_shapes_and_padding_mask():
    stack = AttentionStack(16, 2, depth=2)
    x, ctx = torch.randn(3, 4, 16), torch.randn(3, 7, 16)
    assert stack(x, ctx).shape == (3, 4, 16)
    assert stack(x).shape == (3, 4, 16)  # self-attention
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[:, -1] = True
    ctx2 = ctx.clone()
    ctx2[:, -1] += 100.0  # an ignored key must not change the output
    assert torch.allclose(stack(x, ctx, pad), stack(x, ctx2, pad), atol=1e-5)
    assert LearnedQueryPool(16, 2)(x).shape == (3, 16)


def test_tokenizers_shapes():
    assert StateTokenizer(9, 4, 16)(torch.randn(5, 9)).shape == (5, 4, 16)
    tok = ActionTokenizer(7, 6, 16)
    out, masked = tok(torch.randn(5, 6, 7))
    assert out.shape == (5, 6, 16) and masked.shape == (5, 6) and not masked.any()
    valid = torch.ones(5, 6, dtype=torch.bool)
    valid[:, :2] = False
    _, masked = tok(torch.randn(5, 6, 7), valid)
    assert masked[:, :2].all() and not masked[:, 2:].any()
    _, masked = tok(torch.randn(5, 6, 7), mask_ratio=1.0)
    assert masked.all()


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_mask_ratio_is_the_empirical_rate(ratio):
    tok = ActionTokenizer(7, 6, 8)
    torch.manual_seed(0)
    x = torch.randn(4000, 6, 7)
    out, masked = tok(x, mask_ratio=ratio)
    rate = masked.float().mean().item()
    assert abs(rate - ratio) < 0.02
    # masked tokens are exactly mask_token + position
    expect = tok.mask_token + tok.pos
    m = masked[0]
    assert torch.allclose(out[0][m], expect[m])


def test_normalizer_minmax_gaussian_and_constant_dims():
    norm = Normalizer({"a": (3, "minmax"), "b": (2, "gaussian")})
    norm.set_stats(
        {
            "a": {"min": [0, -1, 5], "max": [2, 1, 5], "mean": [0, 0, 0], "std": [1, 1, 1]},
            "b": {"min": [0, 0], "max": [1, 1], "mean": [1, -1], "std": [2, 0]},
        }
    )
    x = torch.tensor([[0.0, -1.0, 5.0], [2.0, 1.0, 5.0]])
    y = norm.normalize("a", x)
    assert torch.allclose(y, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0]]))
    assert torch.allclose(norm.unnormalize("a", y), x)
    yb = norm.normalize("b", torch.tensor([[3.0, -1.0]]))
    assert torch.allclose(yb, torch.tensor([[1.0, 0.0]]))
    assert norm.stats()["a"]["min"] == [0, -1, 5]
    assert "fields.a.scale" in norm.state_dict()  # saved with the weights
    with pytest.raises(ValueError, match="expects 3"):
        norm.set_stats({"a": {"min": [0], "max": [1], "mean": [0], "std": [1]}, "b": {}})


def test_vision_cnn_shapes_crop_and_recon_target():
    cfg = model_preset("tiny").vision.replace(cameras=("agentview", "eye_in_hand"), crop_ratio=0.75)
    enc = VisionEncoder(cfg)
    rgb = torch.randint(0, 256, (3, 2, 3, 40, 48), dtype=torch.uint8)  # resized on the fly
    assert enc(rgb).shape == (3, 2 * cfg.feature_dim)
    enc.eval()
    assert torch.equal(enc(rgb), enc(rgb))  # centre crop at eval
    x = torch.arange(2 * 16.0).view(2, 1, 4, 4).repeat(2, 1, 1, 1)
    c = crop(x, 0.5, random=True, share=2)
    assert c.shape == (4, 1, 2, 2) and torch.equal(c[:2], c[2:])  # frames of one sample share the crop
    assert downsample_images(rgb, 4).shape == (3, 2 * 3 * 4 * 4)


@pytest.mark.parametrize("chunk", [6, 4, 1])
def test_unet_shapes_any_chunk(chunk):
    net = ConditionalUnet1D(7, 10, down_dims=(16, 32, 64), step_embed_dim=8, n_groups=4)
    out = net(torch.randn(2, chunk, 7), torch.tensor([3, 5]), torch.randn(2, 10))
    assert out.shape == (2, chunk, 7)
    assert net(torch.randn(2, chunk, 7), torch.tensor(4), torch.randn(2, 10)).shape == (2, chunk, 7)


def test_ema_update_formula():
    online = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.data.normal_()
    before = [p.detach().clone() for p in target.parameters()]
    m = 0.9
    ema_update(target, online, m)
    for b, t, o in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(t, m * b + (1 - m) * o, atol=1e-6)
