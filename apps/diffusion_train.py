"""Train the small UNet DDPM of ``edgekit app diffusion`` on scikit-learn's 8x8 digits and export it to ONNX.

Run once (fixed seed; 197 s on one unloaded CPU thread with torch 2.11, and a re-run gives bit-identical
weights; allow more on a busy machine)::

    python -m edgekit.apps.diffusion_train --out apps/data/digits_unet.onnx --force

The result is committed as ``apps/data/digits_unet.onnx`` so nobody needs torch or retraining to sample.
The ONNX model takes ``x`` [B, 1, 8, 8] (noisy digits in [-1, 1]) and ``t`` [B] (float timestep in
[0, T)) and returns ``eps`` [B, 1, 8, 8], the predicted noise (DDPM epsilon parameterisation).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

#: number of diffusion steps of the training schedule (the sampler uses the same alphas)
T = 1000
BETA_START, BETA_END = 1e-4, 0.02


def alphas_cumprod(steps: int = T) -> np.ndarray:
    """The linear-beta DDPM schedule's cumulative alpha products, float64 [steps]."""
    betas = np.linspace(BETA_START, BETA_END, steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def digits_dataset() -> np.ndarray:
    """scikit-learn's 1,797 8x8 digits scaled to [-1, 1], float32 [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float32) / 16.0
    return (x * 2.0 - 1.0)[:, None]


def build_unet(ch: int = 32):
    """A two-level UNet with sinusoidal time embedding (ch=32: ~400k parameters, ch=24: ~230k)."""
    import torch
    from torch import nn

    class TimeEmbed(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.dim = dim
            self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.SiLU(), nn.Linear(dim * 2, dim * 2))

        def forward(self, t):
            half = self.dim // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
            args = t.float()[:, None] * freqs[None]
            return self.mlp(torch.cat([torch.sin(args), torch.cos(args)], dim=1))

    class ResBlock(nn.Module):
        def __init__(self, cin: int, cout: int, tdim: int):
            super().__init__()
            self.n1 = nn.GroupNorm(8, cin)
            self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
            self.t = nn.Linear(tdim, cout)
            self.n2 = nn.GroupNorm(8, cout)
            self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
            self.act = nn.SiLU()

        def forward(self, x, temb):
            h = self.c1(self.act(self.n1(x)))
            h = h + self.t(temb)[:, :, None, None]
            h = self.c2(self.act(self.n2(h)))
            return h + self.skip(x)

    class UNet(nn.Module):
        def __init__(self, ch: int = 32, tdim: int = 64):
            super().__init__()
            self.temb = TimeEmbed(tdim)
            td = tdim * 2
            self.inc = nn.Conv2d(1, ch, 3, padding=1)
            self.d1 = ResBlock(ch, ch, td)                  # 8x8
            self.down = nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1)  # -> 4x4
            self.d2 = ResBlock(ch * 2, ch * 2, td)
            self.mid = ResBlock(ch * 2, ch * 2, td)
            self.u2 = ResBlock(ch * 4, ch * 2, td)
            self.up = nn.ConvTranspose2d(ch * 2, ch, 2, stride=2)       # -> 8x8
            self.u1 = ResBlock(ch * 2, ch, td)
            self.out = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, 1, 3, padding=1))

        def forward(self, x, t):
            e = self.temb(t)
            h0 = self.d1(self.inc(x), e)
            h1 = self.d2(self.down(h0), e)
            m = self.mid(h1, e)
            u = self.u2(torch.cat([m, h1], 1), e)
            u = self.u1(torch.cat([self.up(u), h0], 1), e)
            return self.out(u)

    return UNet(ch)


def train(steps: int = 3000, batch: int = 64, seed: int = 0, lr: float = 2e-3, threads: int = 1, ch: int = 32):
    """Train the UNet with the epsilon loss; returns the EMA model (eval mode)."""
    import copy

    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(digits_dataset())
    abar = torch.from_numpy(alphas_cumprod().astype(np.float32))
    model = build_unet(ch)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    bar = tqdm(range(steps), desc="training digits UNet", file=sys.stderr, mininterval=2.0)
    for step in bar:
        idx = torch.from_numpy(rng.integers(0, len(data), batch))
        x0 = data[idx]
        t = torch.from_numpy(rng.integers(0, T, batch))
        noise = torch.randn_like(x0)
        a = abar[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = torch.nn.functional.mse_loss(model(xt, t.float()), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema


def export_onnx(model, out: Path) -> None:
    """Export ``model`` to ONNX (opset 17) with a dynamic batch axis."""
    import torch

    x = torch.zeros(2, 1, 8, 8)
    t = torch.zeros(2)
    torch.onnx.export(model, (x, t), str(out), input_names=["x", "t"], output_names=["eps"],
                      dynamic_axes={"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}},
                      opset_version=17, dynamo=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "data" / "digits_unet.onnx"))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels", type=int, default=32, help="UNet width")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    args = p.parse_args(argv)
    from edgekit._fs import atomic_file

    out = Path(args.out)
    with atomic_file(out, force=args.force) as tmp:
        t0 = time.perf_counter()
        model = train(args.steps, args.batch, args.seed, threads=args.threads, ch=args.channels)
        print(f"trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        export_onnx(model, tmp)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
