"""Every restoration pipeline offers the FaceRestorer interface that the face tools and `bfr restore` use."""

from __future__ import annotations

import pytest
import torch

from bfr_core.pipelines.base import FaceRestorer


def _vspbfr():
    from bfr_core.pipelines.vspbfr import VSPBFRPipeline
    from tests.vspbfr_tiny import build

    return VSPBFRPipeline(build("e4e"), build("stylegan2", 1), build("code_diffuser", 2), build("restorer", 3), device="cpu")


def _pltrans():
    from bfr_core.models.pltrans import PLTrans
    from bfr_core.pipelines.pltrans import PLTransPipeline
    from tests.pltrans_tiny import tiny_pltrans

    torch.manual_seed(0)
    return PLTransPipeline(PLTrans(tiny_pltrans()), device="cpu", n=50, s=5, steps=3)


@pytest.mark.parametrize("make", [_vspbfr, _pltrans], ids=["vspbfr", "pltrans"])
def test_pipeline_is_a_face_restorer(make):
    pipe = make()
    assert isinstance(pipe, FaceRestorer) and pipe.name and pipe.size > 0
    faces = torch.rand(3, 3, pipe.size, pipe.size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    seen = []
    out = pipe.restore_faces(faces, seed=3, batch_size=2, on_progress=lambda d, t, p: seen.append((d, t)))
    assert out.shape == faces.shape and torch.isfinite(out).all()
    assert seen and seen[-1][0] == seen[-1][1], "progress must reach its total"
    again = pipe.restore_faces(faces, seed=3, batch_size=2)
    torch.testing.assert_close(again, out)

    empty = pipe.restore_faces(faces[:0], seed=3)
    assert empty.shape == (0, 3, pipe.size, pipe.size), "a photo without faces is not an error"
    assert all(isinstance(m, torch.nn.Module) for m in pipe.modules()) and pipe.modules()

    def cancel():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe.restore_faces(faces, seed=3, check_cancel=cancel)
