"""NIQE against the reference implementation's values (BasicSR 1.4.2 ``calculate_niqe``, which matches MATLAB).

Reference numbers were produced by running BasicSR's own NumPy code (outside this repository) on the
same files, read with OpenCV: ``calculate_niqe(cv2.imread(path), 0, input_order='HWC', convert_to='y')``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bfr_core.errors import InputError
from bfr_core.imageio import load_image
from bfr_core.metrics import niqe
from bfr_core.metrics.niqe import PRISTINE_PARAMS, matlab_imresize_half

# (file under ../shared/data, BasicSR's value, our tolerance). The second scale of NIQE filters a
# bicubic-resized image in float32; on large flat areas (cf_0143's background) that cancellation is
# sensitive to the last bit of the resize, so agreement there is ~2e-3 instead of ~1e-4.
REFERENCE = [
    ("hq/ffhq_gfpgan_00000000.png", 4.594603318906035, 5e-4),
    ("lq/whole/cf_00.jpg", 3.6856952053952026, 1e-4),
    ("lq/cropped/cf_0143.png", 12.055259032415213, 5e-3),
]


@pytest.mark.data
@pytest.mark.parametrize("rel, want, tol", REFERENCE)
def test_niqe_matches_reference_on_real_faces(shared_data, rel, want, tol):
    path = shared_data / rel
    if not path.is_file():
        pytest.skip(f"{rel} not in {shared_data}")
    img = load_image(path).permute(0, 3, 1, 2)
    assert niqe(img).item() == pytest.approx(want, abs=tol)


def test_matlab_imresize_matches_reference_values():
    # BasicSR's imresize(x, 0.5, antialiasing=True) of this 8×12 ramp (float32), first and last rows.
    x = torch.arange(96, dtype=torch.float64).reshape(8, 12) ** 1.5 / 100
    x = x.float().double()
    out = matlab_imresize_half(x)
    assert out.shape == (4, 6)
    want_first = [0.18320121, 0.25374332, 0.33856735, 0.43418115, 0.5400974, 0.6562884]
    want_last = [7.0341187, 7.307794, 7.5811753, 7.856293, 8.136328, 8.4234705]
    np.testing.assert_allclose(out[0].numpy(), want_first, atol=2e-6)
    np.testing.assert_allclose(out[-1].numpy(), want_last, atol=2e-6)
    torch.testing.assert_close(matlab_imresize_half(torch.full((10, 14), 3.0, dtype=torch.float64)),
                               torch.full((5, 7), 3.0, dtype=torch.float64))


def test_niqe_batched_equals_unbatched_and_accepts_gray():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 24, 24, generator=g), (192, 192), mode="bicubic",
                                             align_corners=False).clamp(0, 1)
    batched = niqe(smooth)
    single = torch.cat([niqe(smooth[i:i + 1]) for i in range(2)])
    assert batched.shape == (2,) and torch.isfinite(batched).all()
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)
    gray = niqe(smooth[:, :1])
    assert gray.shape == (2,) and torch.isfinite(gray).all()


def test_niqe_handles_flat_blocks_and_rejects_tiny_images():
    img = torch.zeros(1, 3, 192, 192)
    img[..., 96:, :] = torch.rand(1, 3, 96, 192, generator=torch.Generator().manual_seed(1))
    assert math.isfinite(niqe(img).item())  # flat blocks give NaN features, ignored as in MATLAB
    with pytest.raises(InputError):
        niqe(torch.rand(1, 3, 96, 96))


def test_pristine_parameters_are_the_matlab_model():
    with np.load(PRISTINE_PARAMS, allow_pickle=False) as z:
        assert z["mu_pris_param"].shape == (1, 36) and z["cov_pris_param"].shape == (36, 36)
        assert z["gaussian_window"].shape == (7, 7)
        assert z["gaussian_window"].sum() == pytest.approx(1.0)
        assert "basicsr==1.4.2" in str(z["origin"])
        assert z["mu_pris_param"][0, 0] == pytest.approx(2.1, abs=1.0)  # AGGD shape of pristine MSCN ≈ Gaussian
