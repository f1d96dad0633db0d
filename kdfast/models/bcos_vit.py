"""B-cos ViT (Böhle et al., TPAMI 2024): the bcos package's "simple ViT" with B-cos linear layers, identity
activations, bias-free LayerNorms and a fixed 2-D sin-cos position embedding, wrapped as the package wraps it
(nn.Sequential of the ViT and its logit layer), so the package's state dicts (keys "0.…") load unchanged.

In explanation mode the LayerNorms' variance and the attention's queries and keys are constants, so every
layer is linear in its input; the only input-independent term is the position embedding added to the patch
tokens, so for the ViT logit = W(x)ᵀx + (the position embedding's contribution) + logit bias.
"""
from collections import OrderedDict

import torch
from torch import nn

from kdfast.models.bcos import BcosLinear, Detachable, LogitLayer, default_logit_bias


class DetachableLayerNorm(Detachable, nn.LayerNorm):
    """LayerNorm (centred) whose variance is a constant in explanation mode; bias-free by default (the
    package's NoBias(DetachableLayerNorm))."""

    def __init__(self, dim, eps=1e-5, bias=False, device=None, dtype=None):
        super().__init__(dim, eps=eps, bias=bias, device=device, dtype=dtype)

    def forward(self, x):
        if not self.explaining:
            return super().forward(x)
        var, mean = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
        x = (x - mean) / (var.detach() + self.eps).sqrt()
        x = x * self.weight
        return x if self.bias is None else x + self.bias


class Patchify(nn.Module):
    """(B, C, H, W) -> (B, H/p, W/p, p·p·C) patch vectors, ordered (row in patch, column in patch, channel)."""

    def __init__(self, patch_size):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, h // p, w // p, p * p * c)


def sincos_position_embedding(h, w, dim, dtype, device, temperature=10_000):
    """(h·w, dim) fixed 2-D embedding [sin x, cos x, sin y, cos y] (computed in the default float dtype,
    then cast, as the package does)."""
    if dim % 4:
        raise ValueError(f"the sin-cos position embedding needs dim divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    omega = torch.arange(dim // 4, device=device) / (dim // 4 - 1)
    omega = 1.0 / (temperature**omega)
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).to(dtype)


class Attention(Detachable, nn.Module):
    """Multi-head self-attention: plain (bias-free) qkv projection, B-cos output projection. In explanation
    mode queries and keys are constants, so the attention matrix is a dynamic linear weight on the values."""

    def __init__(self, dim, heads, dim_head, linear, norm):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        self.norm = norm(dim)
        self.to_qkv = nn.Linear(dim, dim_head * heads * 3, bias=False)
        self.to_out = linear(dim_head * heads, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(self.norm(x)).chunk(3, dim=-1))
        if self.explaining:
            q, k = q.detach(), k.detach()
        # Explicit softmax(q kᵀ) v rather than fused attention kernels: e2KD differentiates W(x) again.
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, linear, norm):
        super().__init__()
        self.net = nn.Sequential(
            OrderedDict(
                norm=norm(dim), linear1=linear(dim, hidden_dim), act=nn.Identity(), linear2=linear(hidden_dim, dim)
            )
        )

    def forward(self, x):
        return self.net(x)


class Encoder(nn.Module):
    def __init__(self, dim, heads, dim_head, mlp_dim, linear, norm):
        super().__init__()
        self.attn = Attention(dim, heads, dim_head, linear, norm)
        self.ff = FeedForward(dim, mlp_dim, linear, norm)

    def forward(self, x):
        x = self.attn(x) + x
        return self.ff(x) + x


class BcosSimpleViT(nn.Module):
    """Patch embedding (B-cos linear on flattened patches) + sin-cos positions, `depth` pre-norm encoders,
    mean pooling over tokens, and a norm + B-cos linear head."""

    def __init__(self, *, patch_size, num_classes, dim, depth, heads, mlp_dim, channels=6, b=2, max_out=1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        linear = lambda i, o: BcosLinear(i, o, b=b, max_out=max_out)  # noqa: E731
        norm = DetachableLayerNorm
        self.to_patch_embedding = nn.Sequential(
            OrderedDict(rearrage=Patchify(patch_size), linear=linear(channels * patch_size * patch_size, dim))
        )
        self.transformer = nn.Sequential(
            OrderedDict(
                (f"encoder_{i}", Encoder(dim, heads, dim // heads, mlp_dim, linear, norm)) for i in range(depth)
            )
        )
        self.linear_head = nn.Sequential(OrderedDict(norm=norm(dim), linear=linear(dim, num_classes)))

    def forward(self, x):
        tokens = self.to_patch_embedding(x)
        b, h, w, d = tokens.shape
        x = tokens.reshape(b, h * w, d) + sincos_position_embedding(h, w, d, tokens.dtype, tokens.device)
        return self.linear_head(self.transformer(x).mean(dim=1))


class BcosViT(nn.Sequential):
    """nn.Sequential(BcosSimpleViT, LogitLayer), the bcos package's layout for its B-cos ViTs."""

    def __init__(self, vit, logit_layer):
        super().__init__(vit, logit_layer)


def bcos_vit_tiny(num_classes=1000, *, patch_size=16, dim=192, depth=12, heads=3, mlp_dim=768, b=2, max_out=1,
                  logit_bias=None):
    """B-cos ViT-Ti/16 (the bcos package's `bcos_simple_vit_ti_patch16_224`): any image size divisible by the
    patch size. The keyword arguments shrink it for tests."""
    vit = BcosSimpleViT(patch_size=patch_size, num_classes=num_classes, dim=dim, depth=depth, heads=heads,
                        mlp_dim=mlp_dim, b=b, max_out=max_out)
    if logit_bias is None:
        logit_bias = default_logit_bias(num_classes)
    return BcosViT(vit, LogitLayer(logit_bias=logit_bias))
