"""PGDiffPipeline: the FaceRestorer interface, settings and overrides, chunking with per-face guidance tensors,
and the VGG features builder (tiny random weights, 32 px, a few steps)."""

from __future__ import annotations

import pytest
import torch

from bfr_core.errors import InputError, WeightsError
from bfr_core.guidance import CompositeGuidance, IdentityReference, SmoothSemantics, presets
from bfr_core.pipelines.base import FaceRestorer
from bfr_core.pipelines.pgdiff import PGDiffPipeline, restore, vgg_features
from bfr_core.seeding import derive_seed
from tests import test_restorer_protocol as protocol
from tests.tiny_weights import pgdiff_models


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models():
    return pgdiff_models()


def _faces(n=3, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_pgdiff_is_a_face_restorer(models):
    pipe = PGDiffPipeline(models["ddpm"], models["restorer"], device="cpu", steps=3)
    assert pipe.size == 32 and pipe.name == "pgdiff" and isinstance(pipe, FaceRestorer)
    protocol.test_pipeline_is_a_face_restorer(lambda: pipe)


def test_default_guidance_is_the_restoration_preset_and_overrides_apply(models):
    pipe = PGDiffPipeline(models["ddpm"], models["restorer"], device="cpu", steps=3)
    g = pipe.guidance_for()
    assert (g.update, g.scale) == ("classic", 0.1) and len(g.terms) == 1
    assert isinstance(g.terms[0], SmoothSemantics) and g.terms[0].target is models["restorer"]
    faces = _faces(2)
    # the pipeline is `restore` with the preset, the seed and the precision
    torch.testing.assert_close(pipe(faces, 5), restore(models["ddpm"], faces, presets.restoration(models["restorer"]),
                                                       steps=3, seed=5), rtol=0, atol=0)

    forced = pipe.replace(scale=0.02, update="dynamic-channel")
    inp = presets.inpainting(torch.zeros(1, 32, 32))
    fg = forced.guidance_for(inp)
    assert (fg.update, fg.norm, fg.scale) == ("dynamic", "channel", 0.02) and fg.terms == inp.terms
    assert pipe.guidance_for(inp) is inp, "without overrides a given guidance is used as it is"
    assert pipe.scale is None and forced.unet is pipe.unet, "replace() copies settings and shares the networks"

    arc = IdentityReference(arcface=models["arcface"], reference=faces[:1])
    mods = pipe.modules(presets.restoration(models["restorer"]).add(arc, SmoothSemantics(target=models["restorer"])))
    assert mods == [pipe.unet, models["restorer"], models["arcface"]], "each network once, the prior first"

    for bad in (dict(steps=1), dict(sampler="euler"), dict(update="dynamic"), dict(scale=-1.0), dict(guidance="restoration")):
        with pytest.raises(InputError):
            pipe.replace(**bad)
    with pytest.raises(TypeError):
        pipe.replace(unet=None)


def test_chunks_carry_their_faces_guidance_tensors(models):
    """Per-face masks follow their faces into the chunks; the chunk starting at face k uses faces k, k+1...'s streams."""
    pipe = PGDiffPipeline(models["ddpm"], device="cpu", steps=3)
    faces = _faces(3, seed=1)
    masks = torch.zeros(3, 32, 32)
    masks[0, :16], masks[1, :, :16], masks[2, 8:24, 8:24] = 1, 1, 1
    g = presets.inpainting(masks)
    chunked = pipe(faces, 9, guidance=g, batch_size=2)
    first = restore(pipe.unet, faces[:2], presets.inpainting(masks[:2]), steps=3, seed=9)
    last = restore(pipe.unet, faces[2:], presets.inpainting(masks[2:]), steps=3, seed=9, first_index=2)
    stream = restore(pipe.unet, faces[2:], presets.inpainting(masks[2:]), steps=3, seed=derive_seed(9, "pgdiff/2"))
    torch.testing.assert_close(last, stream, rtol=0, atol=0)  # face k > 0: the stream "pgdiff/k" of the seed
    torch.testing.assert_close(chunked, torch.cat([first, last]), rtol=0, atol=0)

    shared = pipe(faces, 9, guidance=presets.inpainting(masks[:1]), batch_size=2)  # batch 1: every face
    torch.testing.assert_close(shared[:2], restore(pipe.unet, faces[:2], presets.inpainting(masks[:1]), steps=3, seed=9))
    with pytest.raises(InputError, match="batch 2 but 3 faces"):
        pipe(faces, 9, guidance=presets.inpainting(masks[:2]), batch_size=1)
    with pytest.raises(InputError, match="PGDiff restores aligned face crops"):
        pipe(torch.zeros(1, 3, 48, 48))


def test_vgg_features_follow_torchvisions_layout(models):
    vgg = models["vgg"]
    sd = {f"features.{k}": v for k, v in vgg.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier: ignored
    features = vgg_features(sd)
    assert [type(m).__name__ for m in features] == [type(m).__name__ for m in vgg][: len(features)]
    x = _faces(1)
    torch.testing.assert_close(features(x), vgg[: len(features)](x))
    assert not any(p.requires_grad for p in features.parameters()) and not features.training
    with pytest.raises(WeightsError, match="VGG"):
        vgg_features({"conv1.weight": torch.zeros(4, 3, 3, 3)})
    with pytest.raises(WeightsError, match="layout"):
        vgg_features({**{k.removeprefix("features."): v for k, v in sd.items()}, "2.weight": torch.zeros(4, 5, 3, 3)})


def test_guidance_of_another_kind_is_refused(models):
    pipe = PGDiffPipeline(models["ddpm"], device="cpu", steps=3)
    with pytest.raises(InputError, match="CompositeGuidance"):
        pipe(_faces(1), guidance=[SmoothSemantics()])
    assert pipe(_faces(0)).shape == (0, 3, 32, 32)
    # an empty guidance (no terms) samples the prior unguided, still seeded
    a = pipe(_faces(1), 3, guidance=CompositeGuidance())
    torch.testing.assert_close(a, restore(pipe.unet, _faces(1), None, steps=3, seed=3), rtol=0, atol=0)


def test_restore_gives_gradients_under_inference_mode(models):
    """Callers may run under torch.inference_mode() (ComfyUI does): input tensors made there are cloned for autograd,
    and a differentiated network loaded there is refused with the fix."""
    from bfr_core.guidance import ColorStatistics

    faces, ref = _faces(1, seed=4), _faces(1, seed=5)

    def guidance():
        return presets.ref_restoration(models["restorer"], models["arcface"], ref).add(ColorStatistics.from_image(ref))

    expected = restore(models["ddpm"], faces, guidance(), steps=3, seed=1)
    with torch.inference_mode():
        got = restore(models["ddpm"], faces.clone(), guidance(), steps=3, seed=1)
        frozen = pgdiff_models()["arcface"]  # parameters made under inference mode
        with pytest.raises(InputError, match="inference_mode"):
            restore(models["ddpm"], faces, presets.ref_restoration(None, frozen, ref), steps=3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not got.is_inference()
