"""A tiny end-to-end overfit on two real faces: the three PLTrans training stages each lower their loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bfr_core.imageio import load_image
from bfr_core.images import to_model
from bfr_core.models import pltrans_losses as L
from bfr_core.models.pltrans import PLTrans
from bfr_core.models.vq import VQGAN
from bfr_core.pipelines.pltrans_diagnostics import downsample_degradation
from bfr_core.seeding import make_generator

from .pltrans_tiny import tiny_pltrans, tiny_vq


def _faces(shared_data, names=("00000.png", "00001.png"), size=32) -> torch.Tensor:
    paths = [shared_data / "hq" / n for n in names]
    if not all(p.exists() for p in paths):
        pytest.skip(f"HQ faces {names} not found in {shared_data / 'hq'}")
    return torch.cat([F.interpolate(to_model(load_image(p)), size=(size, size), mode="bicubic", antialias=True,
                                    align_corners=False).clamp(-1, 1) for p in paths])


@pytest.mark.data
def test_three_stages_overfit_two_faces(shared_data):
    torch.manual_seed(0)
    hq = _faces(shared_data)
    lq = downsample_degradation(4)(hq)
    gen = make_generator(0)

    # stage 1: the HQ dictionary (L1 + codebook/commitment)
    vq = VQGAN(tiny_vq())
    opt = torch.optim.Adam(vq.parameters(), lr=2e-3)
    rec = []
    for _ in range(40):
        total, r = L.dictionary_losses(vq(hq), hq)
        opt.zero_grad()
        total.backward()
        opt.step()
        rec.append(r.item())
    assert rec[-1] < 0.6 * rec[0], rec

    # stage 2: E_Q/D_Q (L^q_cons + λ L_KL) and the latent UNet (L_dif) on the dictionary encoder's features
    model = PLTrans(tiny_pltrans())
    model.load_dictionary(vq)
    reg = model.regularizer
    with torch.no_grad():
        q_hq, q_lq = model.encode(hq), model.encode(lq)
        reg.calibrate_scale(reg.moments(q_hq)[0])
    opt = torch.optim.Adam(reg.parameters(), lr=2e-3)
    cons = []
    for _ in range(40):
        out = L.regularizer_losses(reg, torch.cat([q_lq, q_hq]), gen, q_hq=q_hq)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        cons.append(out.cons.item())
    assert cons[-1] < 0.7 * cons[0], cons

    # stage 3: E, P, cross-attention, G on LQ → HQ (L1), query from the regularisation chain without gradient
    params = [p for name, p in model.named_parameters() if not name.startswith("regularizer.")]
    opt = torch.optim.Adam(params, lr=1e-3)
    l1 = []
    for _ in range(30):
        out = L.restoration_forward(model, lq, gen, 60, 5, 2)
        total, loss, _ = L.consistency_loss(out.restored, hq)
        opt.zero_grad()
        total.backward()
        opt.step()
        l1.append(loss.item())
    assert l1[-1] < 0.8 * l1[0], l1
    assert model.prior.r.detach()[1:].abs().sum() > 0  # the combination of the top-d codes moved off plain VQ
