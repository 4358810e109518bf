"""``bfr restore`` with a tiny compact model standing in for the built-in one (BFR_COMPACT_WEIGHTS): folders
(recursive, relative paths kept), --aligned, no overwrite and resume, the auto method and its reason, clear
errors, whole photos with the real YuNet detector (../shared/data), videos in chunks with their audio (PyAV),
and two CPU processes (``accelerate launch``, ``torchrun``) writing every output once."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bfr_core.cli import main
from bfr_core.imageio import load_image, save_image
from tests.tiny_weights import DETECTOR_FILE, write_compact

REPO = Path(__file__).resolve().parents[1]
WHOLE = REPO.parent / "shared" / "data" / "lq" / "whole"


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Path:
    """A tiny compact model (32² crops) as the built-in weights; nothing downloads."""
    import huggingface_hub.constants  # noqa: F401 - read HF_HUB_OFFLINE once, at import: later tests may download

    write_compact(tmp_path)
    path = tmp_path / "tiny_compact.safetensors"
    monkeypatch.setenv("BFR_COMPACT_WEIGHTS", str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return path


def _image(path: Path, h: int, w: int, c: int = 3, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    save_image(torch.rand(1, h, w, c, generator=g), path)
    return path


def _bfr(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["restore", "-q", "--device", "cpu", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _need_photos() -> None:
    if not (DETECTOR_FILE.is_file() and WHOLE.is_dir()):
        pytest.skip(f"real photos ({WHOLE}) or YuNet weights ({DETECTOR_FILE}) are not here")


def test_aligned_folders_keep_relative_paths_alpha_and_gray(tiny, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    _image(src / "a.png", 40, 40)
    Image.fromarray(np.full((20, 20), 128, np.uint8), "L").save(src / "sub" / "gray.jpg")
    _image(src / "sub" / "deeper" / "rgba.png", 24, 24, c=4)
    _image(src / ".hidden.png", 32, 32)
    (src / "notes.txt").write_text("not an image")
    single = _image(tmp_path / "single.webp", 32, 32)
    out = src / "restored"  # an output folder inside the input: its files are never taken as inputs
    rc, stdout, err = _bfr(capsys, str(src), str(single), "-o", str(out), "--aligned", "--no-download")
    assert rc == 0, err
    assert "method compact: the built-in model (no download)" in err
    assert "4 restored (4 faces)" in stdout
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "single.webp", "sub/deeper/rgba.png", "sub/gray.jpg"]
    assert load_image(out / "sub" / "deeper" / "rgba.png", keep_alpha=True).shape == (1, 32, 32, 4)
    assert load_image(out / "sub" / "gray.jpg").shape == (1, 32, 32, 3)
    rc, stdout, err = _bfr(capsys, str(src), "-o", str(out), "--aligned", "--no-download")
    assert rc == 0 and "0 restored" in stdout and "3 skipped" in stdout
    assert "method compact" not in err  # every output exists: no model is loaded just to skip them


def test_never_overwrites_and_a_rerun_finishes_the_rest(tiny, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        _image(src / f"f{i}.png", 32, 32, seed=i)
    out = tmp_path / "out"
    assert _bfr(capsys, str(src), "-o", str(out), "--aligned", "--no-download")[0] == 0
    (out / "f0.png").write_bytes(b"mine")  # a file the user changed
    (out / "f2.png").unlink()  # as if the run had stopped before it
    rc, stdout, _ = _bfr(capsys, str(src), "-o", str(out), "--aligned", "--no-download")
    assert rc == 0 and "1 restored" in stdout and "2 skipped" in stdout and "--overwrite" in stdout
    assert (out / "f0.png").read_bytes() == b"mine" and (out / "f2.png").is_file()
    rc, stdout, _ = _bfr(capsys, str(src), "-o", str(out), "--aligned", "--no-download", "--overwrite")
    assert rc == 0 and "3 restored" in stdout
    assert load_image(out / "f0.png").shape == (1, 32, 32, 3)


def test_method_choice_and_its_reasons(tiny, tmp_path, capsys, monkeypatch):
    face = _image(tmp_path / "face.png", 32, 32)
    rc, _, err = _bfr(capsys, str(face), "-o", str(tmp_path / "a"), "--aligned", "--no-download")
    assert rc == 0
    reason = err.split("method compact: ", 1)[1]
    assert "vspbfr-style-encoder" in reason and "downloads are off" in reason
    assert "pgdiff skipped on the CPU" in reason and "no pltrans.safetensors" in reason
    rc, _, err = _bfr(capsys, str(face), "-o", str(tmp_path / "b"), "--aligned", "--model", str(tiny))
    assert rc == 0 and "method compact: --model tiny_compact.safetensors is a compact model" in err
    rc, _, err = _bfr(capsys, str(face), "-o", str(tmp_path / "c"), "--aligned", "--method", "pltrans")
    assert rc == 2 and "PLTrans has no official weights" in err
    monkeypatch.setenv("BFR_COMPACT_WEIGHTS", str(tmp_path / "missing.safetensors"))
    rc, _, err = _bfr(capsys, str(face), "-o", str(tmp_path / "d"), "--aligned", "--no-download")
    assert rc == 2 and "no restorer is available" in err and "built-in compact restorer is missing" in err
    assert not (tmp_path / "d").exists()


def test_clear_errors(tiny, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "good.png", 32, 32)
    _image(src / "wide.png", 16, 40)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rc, stdout, err = _bfr(capsys, str(src), "-o", str(tmp_path / "out"), "--aligned", "--no-download")
    assert rc == 1 and "1 restored" in stdout and "2 failed" in stdout
    assert "broken.jpg: could not read" in err and "must be square" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]
    rc, _, err = _bfr(capsys, str(tmp_path / "nowhere"), "-o", str(tmp_path / "x"))
    assert rc == 2 and "input not found" in err
    (tmp_path / "doc.txt").write_text("x")
    rc, _, err = _bfr(capsys, str(tmp_path / "doc.txt"), "-o", str(tmp_path / "x"))
    assert rc == 2 and "neither an image" in err
    (tmp_path / "other").mkdir()
    _image(tmp_path / "other" / "good.png", 32, 32)
    rc, _, err = _bfr(capsys, str(src / "good.png"), str(tmp_path / "other" / "good.png"), "-o", str(tmp_path / "x"))
    assert rc == 2 and "would both be written" in err
    rc, _, err = _bfr(capsys, str(src), "-o", str(tmp_path / "x"), "--visibility", "2")
    assert rc == 2 and "--visibility must be between 0 and 1" in err


def test_whole_photos_with_the_real_detector(tiny, tmp_path, capsys):
    """Real low-quality photos (one RGBA) and one without a face, detected by YuNet, restored by the tiny model."""
    _need_photos()
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(WHOLE / "cf_01.jpg", src)
    shutil.copy(WHOLE / "cf_06.png", src)
    noise = _image(src / "noise.png", 60, 80)
    out = tmp_path / "out"
    rc, stdout, err = _bfr(capsys, str(src), "-o", str(out), "--detector", str(DETECTOR_FILE), "--detector-size", "320",
                           "--no-download")
    assert rc == 0, err
    assert "2 restored" in stdout and "1 without faces (written unchanged)" in stdout
    for name in ("cf_01.jpg", "cf_06.png"):
        before, after = load_image(src / name, keep_alpha=True), load_image(out / name, keep_alpha=True)
        assert before.shape == after.shape  # same size, RGBA keeps its alpha
        assert (before[..., :3] - after[..., :3]).abs().amax() > 0.05  # the faces changed
    torch.testing.assert_close(load_image(out / "noise.png"), load_image(noise))
    rc, stdout, err = _bfr(capsys, str(src / "cf_01.jpg"), "-o", str(tmp_path / "up"), "--detector", str(DETECTOR_FILE),
                           "--upscale", "2", "--no-download")
    assert rc == 0, err
    assert load_image(tmp_path / "up" / "cf_01.jpg").shape == (1, 378, 496, 3)


def test_whole_photos_offline_use_the_builtin_detector(tiny, tmp_path, monkeypatch, capsys, caplog):
    """With no detector file anywhere and downloads off, the shipped MTCNN finds the example portrait's face."""
    import bfr_core

    example = Path(bfr_core.__file__).parent / "data" / "grace_hopper.jpg"
    monkeypatch.setattr("bfr_core.weights.fetch._search_dirs", [])  # no model folder registered by other tests
    monkeypatch.setenv("BFR_MODELS_DIR", str(tmp_path / "models"))
    caplog.set_level("INFO", logger="bfr_core")
    rc, stdout, err = _bfr(capsys, str(example), "-o", str(tmp_path / "out"), "--no-download")
    assert rc == 0, err
    assert "1 restored (1 faces)" in stdout and "built-in MTCNN" in caplog.text
    before, after = load_image(example), load_image(tmp_path / "out" / example.name)
    assert before.shape == after.shape and (before - after).abs().amax() > 0.05


# ------------------------------------------------------------------------------------------------ videos

def _video(path: Path, frames: torch.Tensor, fps: int = 10, audio: bool = True) -> Path:
    """Write IMAGE frames (N, H, W, 3) as H.264 with a sine tone in AAC (PyAV)."""
    import av

    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        a = out.add_stream("aac", rate=16000) if audio else None
        for i, img in enumerate((frames * 255).round().to(torch.uint8).numpy()):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode())
        if a is not None:
            n = 16000 * frames.shape[0] // fps
            tone = (0.3 * np.sin(np.arange(n) * 2 * np.pi * 440 / 16000)).astype(np.float32)[None]
            for lo in range(0, n, 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, lo:lo + 1024]), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, lo
                out.mux(a.encode(chunk))
            out.mux(a.encode())
    return path


def _probe(path: Path) -> tuple[int, tuple[int, int], bool]:
    """(frames, (width, height), has audio) by decoding."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        size = (s.codec_context.width, s.codec_context.height)
        n = sum(1 for _ in c.decode(s))
        return n, size, bool(c.streams.audio)


def _face_frames(n: int) -> torch.Tensor:
    """``n`` 128² frames of a real face, moving a little."""
    import torch.nn.functional as F

    face = load_image(WHOLE / "cf_04.jpg").permute(0, 3, 1, 2)
    face = F.interpolate(face, size=(136, 136), mode="bilinear", antialias=True, align_corners=False)
    return torch.cat([face[..., i:i + 128, i:i + 128] for i in range(n)]).permute(0, 2, 3, 1).contiguous()


def test_video_in_chunks_keeps_its_audio(tiny, tmp_path):
    pytest.importorskip("av", reason="PyAV is the video tool (pip install av)")
    _need_photos()
    from bfr_core.restore import Reporter, RestoreOptions, run

    src = tmp_path / "in"
    src.mkdir()
    _video(src / "clip.mp4", _face_frames(7))
    _video(src / "silent.mp4", _face_frames(2), audio=False)

    class Record(Reporter):
        def __init__(self):
            self.frames: list[int] = []

        def steps(self, done, total, what):
            if what.endswith("(frames)") and what.startswith("clip"):
                self.frames.append(done)

    record = Record()
    options = RestoreOptions(device="cpu", detector=str(DETECTOR_FILE), detector_size=0, video_chunk=3, download=False)
    summary = run([src], tmp_path / "out", options, record)
    assert record.frames == [3, 6, 7]
    assert sorted(summary.restored) == [str(src / "clip.mp4"), str(src / "silent.mp4")] and summary.faces >= 8
    assert _probe(tmp_path / "out" / "clip.mp4") == (7, (128, 128), True)
    assert _probe(tmp_path / "out" / "silent.mp4") == (2, (128, 128), False)
    assert not list((tmp_path / "out").glob(".*"))  # no partial file left behind
    again = run([src], tmp_path / "out", options, Reporter())
    assert len(again.skipped) == 2 and not again.restored


def test_video_writer_evens_odd_sides(tmp_path, caplog):
    pytest.importorskip("av", reason="PyAV is the video tool (pip install av)")
    from fractions import Fraction

    from bfr_core.videoio import VideoWriter

    writer = VideoWriter(tmp_path / "odd.mp4", Fraction(5), 33, 25)
    writer.write(torch.rand(3, 25, 33, 3))
    writer.close()
    assert _probe(tmp_path / "odd.mp4") == (3, (32, 24), False)
    assert "need" in caplog.text and "even sides" in caplog.text


def test_videos_without_a_video_tool_fail_clearly_and_images_still_run(tiny, tmp_path, capsys, monkeypatch):
    from bfr_core import videoio

    _need_photos()
    monkeypatch.setattr(videoio, "video_support", lambda: f"no video tool is installed: {videoio.INSTALL_HINT}")
    src = tmp_path / "in"
    src.mkdir()
    (src / "clip.mp4").write_bytes(b"\x00" * 64)
    shutil.copy(WHOLE / "cf_01.jpg", src)
    rc, stdout, err = _bfr(capsys, str(src), "-o", str(tmp_path / "out"), "--no-download", "--detector", str(DETECTOR_FILE))
    assert rc == 1 and "1 restored" in stdout and "1 failed" in stdout
    assert "failed: " in err and "clip.mp4: no video tool is installed" in err and "pip install av" in err
    rc, _, err = _bfr(capsys, str(src / "clip.mp4"), "-o", str(tmp_path / "out2"), "--aligned", "--no-download")
    assert rc == 1 and "--aligned takes face-crop images, not videos" in err


# ------------------------------------------------------------------------------------------------ processes

LAUNCHERS = {
    # accelerate's --cpu flag starts a single process; its multi-process launcher runs on the CPU with --device cpu.
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bfr_core.cli"],
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "bfr_core.cli"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_split_the_inputs_and_write_each_output_once(tiny, tmp_path, launcher):
    """Two CPU processes: each takes every other file of the sorted list; the main process prints the total."""
    pytest.importorskip("accelerate", reason="several processes share the work through accelerate")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    names = [f"f{i}.png" for i in range(3)] + [f"sub/g{i}.png" for i in range(4)]
    for i, name in enumerate(names):
        _image(src / name, 32, 32, seed=i)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, *LAUNCHERS[launcher], "-v", "restore", str(src), "-o", str(out), "--aligned", "--no-download",
           "-q", "--device", "cpu"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Both processes' summaries are gathered: a file done twice would count twice (or fail as existing).
    assert "7 restored (7 faces)" in done.stdout and "skipped" not in done.stdout and "failed" not in done.stdout
    assert re.search(r"process 0 of 2 on cpu(:0)?: 4 of 7 files", done.stderr), done.stderr[-3000:]
    assert re.search(r"process 1 of 2 on cpu(:0)?: 3 of 7 files", done.stderr)
    assert done.stderr.count("method compact") == 1  # the main process reports the choice
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(names)


@pytest.mark.parametrize("enabled", [True, False], ids=["bars", "quiet"])
def test_progress_bars_follow_files_and_steps(enabled, capsys):
    from bfr_core.cli import _TqdmReporter
    from bfr_core.restore import Item

    bars = _TqdmReporter(enabled)
    bars.chosen("compact", "because")
    bars.start(2)
    item = Item(Path("a.png"), Path("out/a.png"), "image")
    for done in (1, 2, 3):  # one restorer reporting several steps for the same file
        bars.steps(done, 3, "a.png")
    bars.steps(1, 2, "a.png frames 0+")
    bars.item_done(item, "restored")
    bars.item_done(item, "skipped")
    assert bars.inner is None and bars.files.n == (2 if enabled else 0)  # a disabled bar counts nothing
    bars.close()
    assert "method compact: because" in capsys.readouterr().err


def test_the_readme_quickstart_restores_the_example_offline(tmp_path, monkeypatch, capsys):
    """The README's `bfr restore` line, as written (output redirected), with the shipped model and detector."""
    import shlex

    import huggingface_hub.constants  # noqa: F401 - read HF_HUB_OFFLINE once, at import

    readme = (REPO / "README.md").read_text()
    block = readme.split("## On a fresh machine", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    line = next(ln for ln in block.splitlines() if ln.startswith("bfr restore "))
    args = shlex.split(line.split("#", 1)[0])[1:]
    args[args.index("-o") + 1] = str(tmp_path / "restored")
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("BFR_COMPACT_WEIGHTS", raising=False)
    monkeypatch.setattr("bfr_core.weights.fetch._search_dirs", [])  # a fresh machine: no model folders
    monkeypatch.setenv("BFR_MODELS_DIR", str(tmp_path / "models"))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 restored (1 faces)" in out
    example = REPO / "bfr_core" / "data" / "grace_hopper.jpg"
    before, after = load_image(example), load_image(tmp_path / "restored" / example.name)
    assert before.shape == after.shape and 0.002 < (before - after).abs().mean() < 0.05
