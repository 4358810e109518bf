"""Reading and writing videos for the command line, through PyAV (``pip install av``; its wheels carry FFmpeg).

Frames come in chunks as IMAGE tensors ((N, H, W, 3) float in [0, 1]); the writer encodes restored frames at
the input's average frame rate and copies the input's audio streams packet by packet (no re-encoding),
interleaved with the video as it is written. The output is written to a hidden ``.part`` file beside the
target and renamed when complete, so an interrupted run never leaves a truncated video under the final name.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import InputError

log = logging.getLogger(__name__)

__all__ = ["VIDEO_SUFFIXES", "video_support", "VideoReader", "VideoWriter", "partial_path"]

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
# Video codec per output container: H.264 where players expect it, VP9 in WebM, MPEG-4 part 2 in AVI.
_CODECS = {".webm": "libvpx-vp9", ".avi": "mpeg4"}
_DEFAULT_CODEC = "libx264"
INSTALL_HINT = "install PyAV (`pip install av`, or the package's [video] extra; its wheels include FFmpeg) to restore videos"


def video_support() -> str | None:
    """``None`` when videos can be read and written, else the reason (with the fix)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return f"no video tool is installed: {INSTALL_HINT}"
    return None


def _av():
    reason = video_support()
    if reason:
        raise InputError(reason)
    import av

    return av


def partial_path(path: Path) -> Path:
    """Where a video is written until it is complete."""
    return path.with_name(f".{path.stem}.part{path.suffix}")


class VideoReader:
    """The first video stream of a file, decoded in chunks of RGB frames."""

    def __init__(self, path: str | os.PathLike):
        av = _av()
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path))
        except av.FFmpegError as e:
            raise InputError(f"could not open {self.path} as a video ({e}).") from e
        if not self.container.streams.video:
            self.container.close()
            raise InputError(f"{self.path} has no video stream.")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(25, 1)
        self.fps = Fraction(rate)
        self.width, self.height = self.stream.codec_context.width, self.stream.codec_context.height
        self.has_audio = bool(self.container.streams.audio)

    @property
    def frame_count(self) -> int:
        """Frames announced by the container (0 when unknown)."""
        return int(self.stream.frames or 0)

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """Decoded frames, ``size`` at a time, as (n, H, W, 3) float in [0, 1]."""
        av = _av()
        batch: list[np.ndarray] = []
        try:
            for frame in self.container.decode(self.stream):
                batch.append(frame.to_ndarray(format="rgb24"))
                if len(batch) == size:
                    yield torch.from_numpy(np.stack(batch)).float().div_(255.0)
                    batch = []
        except av.FFmpegError as e:
            raise InputError(f"{self.path}: decoding failed after some frames ({e}); the file is damaged.") from e
        if batch:
            yield torch.from_numpy(np.stack(batch)).float().div_(255.0)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Encode frames into ``path`` (via its ``.part`` file) and copy the audio of ``source`` alongside."""

    def __init__(self, path: str | os.PathLike, fps: Fraction, width: int, height: int,
                 source: str | os.PathLike | None = None, crf: int = 18):
        av = _av()
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.tmp), mode="w")
        codec = _CODECS.get(self.path.suffix.lower(), _DEFAULT_CODEC)
        self.stream = self.container.add_stream(codec, rate=fps)
        # 4:2:0 chroma needs even sides: an odd last row/column is dropped.
        self.width, self.height = width - width % 2, height - height % 2
        if (self.width, self.height) != (width, height):
            log.warning("%s: %dx%d frames are cropped to %dx%d (the video codec needs even sides)",
                        self.path.name, width, height, self.width, self.height)
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": str(crf), "preset": "medium"}
        self.index = 0
        self.time_base = Fraction(1, 1) / Fraction(fps)
        self._audio: list[tuple] = []  # (input stream, output stream)
        self._audio_in = None
        self._packets: Iterator | None = None
        self._pending = None
        if source is not None:
            self._open_audio(av, Path(source))

    def _open_audio(self, av, source: Path) -> None:
        src = av.open(str(source))
        if not src.streams.audio:
            src.close()
            return
        for s in src.streams.audio:
            try:
                self._audio.append((s, self.container.add_stream_from_template(s)))
            except (ValueError, av.FFmpegError) as e:
                log.warning("%s: audio stream %d (%s) cannot be copied into %s and is dropped: %s",
                            source.name, s.index, s.codec_context.name, self.path.suffix, e)
        if not self._audio:
            src.close()
            return
        self._audio_in = src
        self._packets = src.demux(*[s for s, _ in self._audio])

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Copy audio packets whose time is before ``seconds`` (all remaining ones when None)."""
        if self._packets is None:
            return
        outs = {s.index: o for s, o in self._audio}
        while True:
            packet = self._pending if self._pending is not None else next(self._packets, None)
            self._pending = None
            if packet is None:
                self._packets = None
                return
            if packet.dts is None:  # demuxer flush packets carry no data
                continue
            t = float(packet.pts * packet.time_base) if packet.pts is not None else 0.0
            if seconds is not None and t > seconds:
                self._pending = packet
                return
            packet.stream = outs[packet.stream.index]
            self.container.mux(packet)

    def write(self, frames: torch.Tensor) -> None:
        """Append (n, H, W, 3) frames in [0, 1]."""
        av = _av()
        arr = (frames[:, : self.height, : self.width, :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        for img in arr:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.index
            frame.time_base = self.time_base
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.index += 1
        self._mux_audio_until(float(self.index * self.time_base))

    def close(self) -> Path:
        """Flush, copy the remaining audio, and move the finished file to its final name."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        self._mux_audio_until(None)
        self.container.close()
        if self._audio_in is not None:
            self._audio_in.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and remove the partial file (after an error or an interruption)."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - the file is being discarded anyway
            pass
        if self._audio_in is not None:
            self._audio_in.close()
        self.tmp.unlink(missing_ok=True)
