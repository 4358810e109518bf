"""The PGDiff pipeline: schedule choice, seeding, batching, resizing, precision, progress and errors (tiny models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bfr_core.errors import InputError, Interrupted
from bfr_core.guidance import presets
from bfr_core.models.adm_unet import ADMUNet, ADMUNetConfig
from bfr_core.models.rrdb_restorer import RRDBRestorer, RRDBRestorerConfig
from bfr_core.faces.pipeline import restore_with_backoff
from bfr_core.pipelines.pgdiff import PGDiffPipeline, make_schedule, noise_generators, restore
from bfr_core.progress import Progress
from bfr_core.sampling import IDDPMDenoiser, sample_ddpm

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


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class OneAtATime(nn.Module):
    """Runs a network (positional batch-first tensors) one image at a time, and fails above ``max_batch`` images like a
    GPU out of memory. CPU matrix products round differently at another batch size (~1e-7 per layer), which would
    blur what batch-size tests check: that every image draws the same random numbers."""

    def __init__(self, inner: nn.Module, max_batch: int | None = None):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.max_batch = max_batch

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        n = args[0].shape[0]
        if self.max_batch is not None and n > self.max_batch:
            raise RuntimeError(f"CUDA out of memory (a test stand-in: {n} images, at most {self.max_batch})")
        return torch.cat([self.inner(*(a[i:i + 1] for a in args)) for i in range(n)])


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
    # face k draws x_T from its own generator; face 0's is the released sampler's: torch.manual_seed(s); randn(1, ...)
    x_t = torch.cat([torch.randn(1, 3, 64, 64, generator=gen) for gen in noise_generators(7, 2)])
    torch.testing.assert_close(x_t[:1], torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7)), rtol=0, atol=0)
    torch.testing.assert_close(restore(unet, lq, g, steps=2, seed=7, noise=x_t), a, rtol=0, atol=0)
    # faces 1.. of a request given on their own (first_index) draw the same numbers
    torch.testing.assert_close(restore(unet, lq[1:], g, steps=2, seed=7, first_index=1), a[1:], rtol=1e-4, atol=1e-4)


def test_one_face_follows_the_released_single_stream_sampler(models):
    """Face 0 with seed s draws x_T, then each step's noise, from torch.Generator().manual_seed(s) in the released
    order: with one face that is the released sampler's single stream."""
    unet, restorer = models
    lq, g = _lq(1), presets.restoration(restorer)
    gen = torch.Generator().manual_seed(7)
    x_t = torch.randn(lq.shape, generator=gen)
    want = sample_ddpm(IDDPMDenoiser(unet), x_t, make_schedule(3), guidance=g.bind(lq, x_t), generator=gen)
    torch.testing.assert_close(restore(unet, lq, g, steps=3, seed=7), want.clamp(-1, 1), rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_batch_size_and_the_out_of_memory_back_off_never_change_a_result(models, sampler):
    """Every face has its own random stream: 3 faces at batch 3, 2 or 1 give the same samples exactly (networks run
    one face at a time, see OneAtATime), also when Restore Faces' back-off halves the batch after an out-of-memory."""
    unet, restorer = models
    faces = _lq(3, seed=3)
    masks = torch.zeros(3, 64, 64)
    masks[0, :32], masks[1, :, :32], masks[2, 16:48, 16:48] = 1, 1, 1
    guidance = presets.restoration(OneAtATime(restorer)) if sampler == "ddpm" else presets.inpainting(masks)
    pipe = PGDiffPipeline(OneAtATime(unet), guidance=guidance, device="cpu", dtype="fp32", steps=3, sampler=sampler, eta=0.5)
    whole = pipe.restore_faces(faces, 5, batch_size=3)
    for batch in (1, 2):
        torch.testing.assert_close(pipe.restore_faces(faces, 5, batch_size=batch), whole, rtol=0, atol=0)
    oom = PGDiffPipeline(OneAtATime(unet, max_batch=1), guidance=guidance, device="cpu", dtype="fp32", steps=3,
                         sampler=sampler, eta=0.5)
    with pytest.raises(RuntimeError, match="out of memory"):
        oom.restore_faces(faces, 5, batch_size=3)
    torch.testing.assert_close(restore_with_backoff(oom, faces, 5, batch_size=3), whole, rtol=0, atol=0)
    # the networks as they are: another batch size changes only the rounding
    plain = PGDiffPipeline(unet, guidance=guidance, device="cpu", dtype="fp32", steps=3, sampler=sampler, eta=0.5)
    torch.testing.assert_close(plain.restore_faces(faces, 5, batch_size=1), whole, rtol=0, atol=1e-4)
    assert (pipe.restore_faces(faces, 6, batch_size=3) - whole).abs().max() > 1e-2, "the seed must change the result"


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
