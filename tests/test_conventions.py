"""IMAGE/MASK conversion, device/precision policy, progress/cancellation and seeded streams."""

from __future__ import annotations

import pytest
import torch

from bfr_core import images
from bfr_core.device import resolve_device, resolve_dtype
from bfr_core.errors import InputError, Interrupted
from bfr_core.progress import Progress
from bfr_core.seeding import derive_seed, make_generator, randn


def test_image_round_trip_is_exact_to_float_precision():
    img = torch.rand(2, 7, 5, 3)
    x = images.to_model(img)
    assert x.shape == (2, 3, 7, 5) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(images.from_model(x), img, atol=1e-6)
    assert images.from_model(x).is_contiguous() and images.from_model(x).dtype == torch.float32


def test_grayscale_rgba_and_unbatched_inputs():
    gray = torch.rand(1, 4, 4, 1)
    assert torch.equal(images.to_model(gray)[:, 0], images.to_model(gray)[:, 2])
    rgba = torch.rand(1, 4, 4, 4)
    rgb, alpha = images.split_alpha(rgba)
    assert rgb.shape == (1, 4, 4, 3) and torch.equal(alpha, rgba[..., 3])
    assert torch.equal(images.merge_alpha(rgb, alpha), rgba)
    la = torch.rand(1, 4, 4, 2)
    rgb, alpha = images.split_alpha(la)
    assert rgb.shape[-1] == 3 and torch.equal(alpha, la[..., 1])
    assert images.to_model(torch.rand(4, 4, 3)).shape == (1, 3, 4, 4)
    u8 = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    assert images.to_model(u8).eq(1).all()


@pytest.mark.parametrize("bad,match", [
    (torch.rand(1, 3, 8, 8, 2), "shape"),
    (torch.rand(1, 3, 8, 8), "channels"),
    (torch.full((1, 2, 2, 3), float("nan")), "NaN"),
    ("not a tensor", "torch tensor"),
])
def test_bad_images_raise_clear_errors(bad, match):
    with pytest.raises(InputError, match=match):
        images.check_image(bad)


def test_masks_are_fitted_to_the_image():
    m = images.check_mask(torch.zeros(1, 64, 64), batch=3, height=32, width=48)
    assert m.shape == (3, 32, 48)
    with pytest.raises(InputError, match="batch"):
        images.check_mask(torch.zeros(2, 8, 8), batch=3, height=8, width=8)
    assert images.mask_to_model(torch.ones(8, 8), 2, 8, 8).shape == (2, 1, 8, 8)


def test_device_and_precision_policy():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(None, torch.device("cuda")) in (torch.bfloat16, torch.float16)
    with pytest.raises(InputError, match="unknown precision"):
        resolve_dtype("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda")


def test_progress_reports_and_cancels():
    seen = []
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupted("stop")

    p = Progress(5, lambda d, t, prev: seen.append((d, t, prev is not None)), cancel)
    p.step()
    p.step(preview=torch.zeros(1, 3, 2, 2))
    with pytest.raises(Interrupted):
        p.step()
    assert seen == [(1, 5, False), (2, 5, True), (3, 5, False)]


def test_seeded_streams_are_reproducible_and_independent():
    a = randn((4,), make_generator(7, stream="noise"))
    b = randn((4,), make_generator(7, stream="noise"))
    c = randn((4,), make_generator(7, stream="styles"))
    d = randn((4,), make_generator(8, stream="noise"))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    assert derive_seed(5) == 5 and 0 <= derive_seed(5, "x") < 2**63
