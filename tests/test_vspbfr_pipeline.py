"""The VSPBFR pipeline on tiny random models: stages, seeding streams, chunking, progress, precision, errors."""

from __future__ import annotations

import pytest
import torch

from bfr_core.errors import InputError, Interrupted
from bfr_core.pipelines import vspbfr
from bfr_core.pipelines.vspbfr import FeatureBank, VSPBFRPipeline

from .vspbfr_tiny import build


def make_pipeline(**kw) -> VSPBFRPipeline:
    return VSPBFRPipeline(build("e4e"), build("stylegan2"), build("code_diffuser"), build("restorer"), device="cpu",
                          **kw)


@pytest.fixture(scope="module")
def pipe() -> VSPBFRPipeline:
    return make_pipeline()


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_restores_a_batch_with_preview(pipe, faces):
    out = pipe(faces, seed=1, preview=True)
    assert out.restored.shape == faces.shape and out.restored.dtype == torch.float32
    assert out.codes.shape == (3, 10, 16)
    assert out.preview.shape == faces.shape
    assert torch.isfinite(out.restored).all()
    assert pipe(faces, seed=1).preview is None


def test_same_seed_same_result_other_seed_other_result(pipe, faces):
    a, b, c = pipe(faces, seed=5), pipe(faces, seed=5), pipe(faces, seed=6)
    assert torch.equal(a.restored, b.restored) and torch.equal(a.codes, b.codes)
    assert not torch.allclose(a.restored, c.restored) and not torch.allclose(a.codes, c.codes)


def test_stages_compose_to_the_one_call_pipeline(pipe, faces):
    codes = pipe.encode(faces)
    w0 = pipe.diffuse(codes, seed=3)
    bank = pipe.feature_bank(w0, seed=3)
    assert isinstance(bank, FeatureBank) and [f.shape[-1] for f in bank.features] == [4, 8, 16, 32]
    restored = pipe.restore(faces, w0, bank, seed=3)
    out = pipe(faces, seed=3)
    assert torch.equal(out.codes, w0) and torch.equal(out.restored, restored)
    # the preview is extra work after the taps: the same taps, the same restoration
    with_preview = pipe.feature_bank(w0, seed=3, preview=True)
    assert all(torch.equal(a, b) for a, b in zip(with_preview.features, bank.features))
    assert torch.equal(pipe.restore(faces, w0, with_preview, seed=3), restored)
    # a plain list of maps works as a bank too
    assert torch.equal(pipe.restore(faces, w0, bank.features, seed=3), restored)


def test_each_face_draws_from_its_own_streams(pipe, faces, monkeypatch):
    codes = pipe.encode(faces)
    # face 2 alone, told its batch position, gets the same starting noise (recorded instead of sampled)
    monkeypatch.setitem(vspbfr._SAMPLERS, "x0", lambda denoiser, cond, schedule, start, progress: start)
    starts = pipe.diffuse(codes, seed=2)
    assert torch.equal(pipe.diffuse(codes[2:], seed=2, first_index=2), starts[2:])
    assert not torch.equal(pipe.diffuse(codes[2:], seed=2), starts[2:])
    monkeypatch.undo()
    w0 = pipe.diffuse(codes, seed=2)
    bank = pipe.feature_bank(w0, seed=2)
    one = pipe.feature_bank(w0[1:2], seed=2, first_index=1)
    for a, b in zip(one.features, bank.features):
        assert torch.allclose(a, b[1:2], rtol=1e-5, atol=1e-5 * b.abs().max().item())
    r = pipe.restore(faces, w0, bank, seed=2)
    r1 = pipe.restore(faces[1:2], w0[1:2], bank.select(slice(1, 2)), seed=2, first_index=1)
    assert torch.allclose(r1, r[1:2], rtol=1e-5, atol=1e-5 * r.abs().max().item())


def test_chunked_call_matches_the_whole_batch(pipe, faces):
    """Chunks change only float rounding, not the random draws. With random weights the code diffuser amplifies
    rounding differences of the batch size ~10⁴-fold (the official network does the same), hence the tolerance;
    a different draw would change the results by O(1)."""
    whole, chunked = pipe(faces, seed=4), pipe(faces, seed=4, batch_size=2)
    for a, b in ((chunked.codes, whole.codes), (chunked.restored, whole.restored)):
        assert torch.allclose(a, b, rtol=0, atol=1e-2 * b.abs().max().item())
    other = pipe(faces, seed=5, batch_size=2)
    assert not torch.allclose(other.restored, whole.restored, rtol=0, atol=1e-2 * whole.restored.abs().max().item())


def test_streams_are_independent(pipe, faces):
    codes = pipe.encode(faces)
    w0 = pipe.diffuse(codes, seed=1)
    bank = pipe.feature_bank(w0, seed=1)
    base = pipe.restore(faces, w0, bank, seed=1)
    other_noise = pipe.restorer.make_noise(3, torch.Generator().manual_seed(9))
    styles_only = pipe.restore(faces, w0, bank, seed=1, noise=other_noise)
    assert not torch.allclose(base, styles_only)
    no_mix = pipe.restore(faces, w0, bank, seed=1, mixing_prob=0.0)
    always = pipe.restore(faces, w0, bank, seed=1, mixing_prob=1.0)
    assert not torch.allclose(no_mix, always)
    styles = pipe.restorer.styles_from_z(torch.zeros(3, 16))
    assert torch.equal(pipe.restore(faces, w0, bank, seed=1, styles=styles),
                       pipe.restore(faces, w0, bank, seed=8, styles=styles,
                                    noise=_restorer_noise(pipe, seed=1)))


def _restorer_noise(pipe, seed):
    """The noise the pipeline draws for 3 faces from ``seed`` (stream restorer-noise, one generator per face)."""
    from bfr_core.seeding import make_generator

    gens = [make_generator(seed, "cpu", stream=f"restorer-noise/{i}") for i in range(3)]
    per_face = [pipe.restorer.make_noise(1, g) for g in gens]
    return {k: torch.cat([d[k] for d in per_face]) for k in per_face[0]}


def test_progress_counts_every_step_and_cancel_stops(pipe, faces):
    seen = []
    pipe(faces, seed=0, preview=True, batch_size=2, on_progress=lambda d, t, p: seen.append((d, t, p is not None)))
    per_chunk = pipe.steps_per_chunk
    assert per_chunk == 7 and len(seen) == 2 * per_chunk
    assert seen[-1][:2] == (2 * per_chunk, 2 * per_chunk)
    assert [p for _, _, p in seen[:per_chunk]] == [False] * 5 + [True, True]  # the bank preview, the restored faces

    def cancel():
        if len(seen) > 2 * per_chunk + 2:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        pipe(faces, seed=0, on_progress=lambda d, t, p: seen.append((d, t, p)), check_cancel=cancel)


def test_bf16_autocast_and_eps_sampler_run(faces):
    out = make_pipeline(dtype="bf16")(faces[:1], seed=0, preview=True)
    assert out.restored.dtype == torch.float32 and torch.isfinite(out.restored).all()
    eps = make_pipeline(sampler="eps")
    a, b = eps(faces[:1], seed=0), eps(faces[:1], seed=0)
    assert torch.equal(a.restored, b.restored)


def test_bad_inputs_raise_input_errors(pipe, faces):
    with pytest.raises(InputError, match="aligned face crops"):
        pipe(torch.rand(1, 3, 48, 48))
    with pytest.raises(InputError, match="floating-point"):
        pipe.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(InputError, match="style codes"):
        pipe.diffuse(torch.zeros(1, 18, 512))
    codes = pipe.encode(faces)
    bank = pipe.feature_bank(codes)
    with pytest.raises(InputError, match="same batch size"):
        pipe.restore(faces[:2], codes, bank)
    with pytest.raises(InputError, match="sampler"):
        make_pipeline(sampler="ddim")
    with pytest.raises(InputError, match="same e4e checkpoint"):
        VSPBFRPipeline(build("e4e"), _small_generator(), build("code_diffuser"), build("restorer"), device="cpu")


def _small_generator():
    from bfr_core.models.stylegan2 import Generator, GeneratorConfig

    return Generator(GeneratorConfig(size=128, style_dim=16, n_mlp=2, channel_max=16))
