"""The PGDiff pipeline: schedule choice, seeding, batching, resizing, precision, progress and errors (tiny models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bfr_core.errors import InputError, Interrupted
from bfr_core.guidance import presets
from bfr_core.models.adm_unet import ADMUNet, ADMUNetConfig
from bfr_core.models.rrdb_restorer import RRDBRestorer, RRDBRestorerConfig
from bfr_core.pipelines.pgdiff import make_schedule, restore
from bfr_core.progress import Progress

from .test_pgdiff_golden import randomize


class NoGradUNet(nn.Module):
    """Wraps the UNet and fails if it is ever run with autograd on."""

    def __init__(self, inner: ADMUNet):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.calls = 0

    def forward(self, x, t):
        assert not torch.is_grad_enabled(), "the UNet must run without autograd"
        self.calls += 1
        return self.inner(x, t)


@pytest.fixture(scope="module")
def models():
    cfg = ADMUNetConfig(image_size=64, model_channels=16, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_resolutions=(32,),
                        num_head_channels=16, norm_groups=8)
    unet = NoGradUNet(randomize(ADMUNet(cfg).eval(), 4))
    restorer = randomize(RRDBRestorer(RRDBRestorerConfig(mid_channels=8, num_blocks=1, growth_channels=4)).eval(), 2)
    return unet, restorer


def _lq(batch=2, size=64, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_make_schedule():
    assert make_schedule(1000).timesteps.tolist() == list(range(1000))
    assert make_schedule(100).timesteps.tolist() == list(range(0, 1000, 10))  # the released ddpm100
    assert make_schedule("ddpm25").timesteps.tolist() == list(range(0, 1000, 40))
    odd = make_schedule(999)  # no integer stride: evenly spread instead
    assert len(odd) == 999 and odd.timesteps[-1] == 999
    for bad in (1, 1001, "ddpm999"):
        with pytest.raises(InputError):
            make_schedule(bad)


def test_restore_is_seeded_batched_and_guided(models):
    unet, restorer = models
    lq = _lq()
    g = presets.restoration(restorer)
    a = restore(unet, lq, g, steps=2, seed=7)
    b = restore(unet, lq, g, steps=2, seed=7)
    c = restore(unet, lq, g, steps=2, seed=8)
    d = restore(unet, lq, None, steps=2, seed=7)
    assert a.shape == lq.shape and a.dtype == torch.float32 and a.abs().max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().mean() > 1e-3 and (a - d).abs().mean() > 1e-5
    # seed s draws x_T like the released sampler: torch.manual_seed(s); randn(shape)
    x_t = torch.randn(lq.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(restore(unet, lq, g, steps=2, seed=7, noise=x_t), a, rtol=0, atol=0)


def test_restore_resizes_to_the_model_and_back(models):
    unet, _ = models
    calls = unet.calls
    seen = []
    out = restore(unet, _lq(1, 48), presets.inpainting(torch.zeros(1, 48, 48)), steps=2, sampler="ddim",
                  callback=lambda d: seen.append(tuple(d["x"].shape)))
    assert out.shape == (1, 3, 48, 48)
    assert seen == [(1, 3, 64, 64)] * 2 and unet.calls == calls + 2


def test_restore_under_bf16_autocast_stays_close(models):
    unet, restorer = models
    lq = _lq(1)
    ref = restore(unet, lq, presets.restoration(restorer), steps=2, sampler="ddim")
    low = restore(unet, lq, presets.restoration(restorer), steps=2, sampler="ddim", dtype=torch.bfloat16)
    assert low.dtype == torch.float32
    assert (low - ref).abs().mean() < 0.05


def test_restore_reports_progress_and_can_be_interrupted(models):
    unet, _ = models
    done = []
    restore(unet, _lq(1), None, steps=3, progress=Progress(3, on_progress=lambda i, n, p: done.append((i, n, p.shape))))
    assert done == [(1, 3, (1, 3, 64, 64)), (2, 3, (1, 3, 64, 64)), (3, 3, (1, 3, 64, 64))]

    def cancel():
        raise Interrupted("stop")

    calls = unet.calls
    with pytest.raises(Interrupted):
        restore(unet, _lq(1), None, steps=3, progress=Progress(3, check_cancel=cancel))
    assert unet.calls == calls  # checked before the first network call


def test_restore_rejects_bad_arguments(models):
    unet, _ = models
    with pytest.raises(InputError, match="sampler"):
        restore(unet, _lq(), None, steps=2, sampler="euler")
    with pytest.raises(InputError, match="B, 3, H, W"):
        restore(unet, torch.zeros(3, 64, 64), None, steps=2)
    with pytest.raises(InputError, match="noise"):
        restore(unet, _lq(), None, steps=2, noise=torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputError, match="batch"):
        restore(unet, _lq(2), presets.inpainting(torch.zeros(3, 64, 64)), steps=2)
