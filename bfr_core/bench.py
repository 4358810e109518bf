"""``bfr bench``: time every pipeline by the measurement protocol and write the README's speed table.

Protocol (``shared/specs/performance.md``): 512² aligned faces; the fast precision (bf16 on CUDA, fp32 on the
CPU); warm-up runs, then the median and p90 of timed runs, each read after ``torch.cuda`` events have
completed (CPU: ``perf_counter``); peak ``torch.cuda.max_memory_allocated``; eager and compiled timed
separately; hardware named. Before a speed is reported, the fast path's output is compared with the fp32
eager reference on the same fixed faces (the packaged portrait with seeded variations): a row passes at a worst
per-face PSNR of 40 dB; the Markdown table shows speeds of passing rows only (JSON keeps every number).

Weights are random (FLOPs do not depend on their values): each model's own initialisation where that is
random, and seeded small values where it is constant (zero-initialised output layers, norms, biases), so
every path carries signal and the fp32/bf16 comparison measures something. The models are full size unless
``tiny`` (CI smoke test: the numbers then mean nothing).

PGDiff costs the same at every step (a UNet pass, the restorer and the guidance gradient), so its time is linear
in the step count. Its step time is measured on a short run (``probe`` steps, warm-up and repetitions as
above); each step count is then timed directly when a few runs fit in ``max_case_s``, and otherwise reported as
steps × measured step time, labelled "extrapolated" (on a 2-core CPU, 1000 steps take hours). Its correctness
check runs the shortest schedule (on the CPU the probe's, as 25 steps there take minutes). On the CPU in fp32
the eager path is the reference itself, so it needs no check.

The faces path, on a 1080p frame: detection (YuNet and RetinaFace-R50 with random weights, the frame shrunk to
≤ 640 px), the crop of one face, and the paste-back of restored crops (:func:`~bfr_core.faces.bench.bench_faces`).

``compile``: regional ``torch.compile`` of each model's repeated blocks (``_repeated_blocks`` where the model
declares them, else :data:`REGIONS`), static shapes, timed after eager, with the first call's time reported as
compile time. ``channels_last``: the modules' weights in channels-last memory format. Each variant is checked
against the fp32 eager reference like the eager fast path.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .device import resolve_device, resolve_dtype
from .errors import InputError

log = logging.getLogger(__name__)

__all__ = ["BenchSettings", "run_bench", "bench_command", "hardware_info", "randomize_", "fixed_faces", "measure", "compare",
           "compile_regions", "bench_markdown", "REGIONS", "PIPELINES"]

PIPELINES = ("vspbfr", "pltrans", "pgdiff", "faces")

#: Repeated blocks to compile for models that do not declare ``_repeated_blocks`` (outermost match wins).
REGIONS: dict[str, tuple[str, ...]] = {
    "Encoder4Editing": ("BottleneckIRSE", "GradualStyleBlock"),
    "Generator": ("StyledConv", "ToRGB"),
    "CodeDiffuser": ("TACCBlock",),
    "RestorationNet": ("SMARTLayer", "StyledConv", "ToRGB", "ConvLayer"),
    "PLTrans": ("ResnetBlock", "SelfAttention", "CrossAttentionBlock", "ResBlock", "AttentionBlock"),
}

PSNR_GATE_DB = 40.0

#: Detectors timed on the 1080p frame (random weights): ``bfr restore``'s default and the one the goals name.
FACE_DETECTORS = ("yunet", "retinaface_resnet50")


@dataclass
class BenchSettings:
    """What to run; ``None`` fields take the device's defaults (GPU: warm-up 10, 50 runs; CPU: 1 and 5)."""

    pipelines: Sequence[str] = PIPELINES
    device: str = "auto"
    dtype: str = "auto"
    batches: Sequence[int] | None = None  # GPU: (1, 16); CPU: (1,)
    pgdiff_steps: Sequence[int] = (1000, 100, 25)
    compile: bool = False
    channels_last: bool = False
    tiny: bool = False
    warmup: int | None = None
    repeats: int | None = None
    max_case_s: float | None = None  # GPU 20 s, CPU 120 s, tiny 2 s
    budget_s: float | None = None
    check_faces: int | None = None  # GPU 16, CPU 2 (the protocol's fixed faces)
    probe_steps: int | None = None  # PGDiff steps of the step-time run: GPU 10, CPU 2
    threads: int | None = None  # torch CPU threads during the run (None: as set)
    seed: int = 0


# ------------------------------------------------------------------------------------------------ hardware

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device) -> dict[str, Any]:
    """CPU model and cores, torch threads, GPU name/memory/capability, and the software versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cpu_logical_cores": os.cpu_count(), "cpu_usable_cores": usable,
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "device": str(device),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), gpu_capability=f"{p.major}.{p.minor}",
                    gpu_multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark)
    return info


def _hardware_line(hw: dict[str, Any]) -> str:
    cpu = f"{hw['cpu']} ({hw['cpu_usable_cores']} cores usable, torch threads: {hw['torch_threads']})"
    if hw["device"].startswith("cuda"):
        return (f"GPU {hw['gpu']} ({hw['gpu_memory_gb']} GiB, sm {hw['gpu_capability']}), CUDA {hw['cuda']}, "
                f"torch {hw['torch']}; host CPU {cpu}")
    return f"CPU {cpu}, torch {hw['torch']}"


# ------------------------------------------------------------------------------------------------ inputs, weights

@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give constant parameters seeded random values, keeping the model's own random initialisation.

    Zero-initialised weights (≥ 2-D) get N(0, 1/fan_in); other constant tensors (norm scales, biases, noise
    strengths) get value + 0.1·N(0, 1). Buffers are left alone (running statistics, FIR kernels, tables).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in model.named_parameters():
        if not p.is_floating_point() or p.numel() == 0:
            continue
        if p.numel() > 1 and bool((p.detach().float().std() > 0).item()):
            continue
        if p.dim() >= 2:
            fan_in = p[0].numel()
            new = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
        else:
            new = p.detach().float().cpu() + 0.1 * torch.randn(p.shape, generator=g)
        p.copy_(new.to(p))
    return model


def _portrait(size: int) -> torch.Tensor | None:
    path = Path(__file__).parent / "data" / "grace_hopper.jpg"
    if not path.is_file():
        return None
    from .imageio import load_image

    img = load_image(path).permute(0, 3, 1, 2)
    h, w = img.shape[-2:]
    s = min(h, w)
    img = img[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return F.interpolate(img, (size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def fixed_faces(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` fixed faces (n, 3, size, size) in [-1, 1] on the CPU: the packaged portrait with seeded variations
    (flip, exposure, down-and-up scaling by 1–4×, noise), or smooth random images if the portrait is missing."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    base = _portrait(size)
    if base is None:
        low = torch.randn(1, 3, 8, 8, generator=g)
        base = (torch.tanh(F.interpolate(low, (size, size), mode="bilinear", align_corners=False)) + 1) / 2
    out = []
    for i in range(n):
        x = base.flip(-1) if i % 2 else base
        x = x * (0.8 + 0.4 * torch.rand(1, generator=g)) + 0.1 * (torch.rand(1, generator=g) - 0.5)
        f = 1 + i % 4
        if f > 1:
            small = F.interpolate(x, (max(1, size // f),) * 2, mode="area")
            x = F.interpolate(small, (size, size), mode="bilinear", align_corners=False)
        x = x + 0.02 * (i % 3) * torch.randn(x.shape, generator=g)
        out.append(x.clamp(0, 1))
    return torch.cat(out) * 2 - 1


# ------------------------------------------------------------------------------------------------ timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call, read after the device has finished (CUDA events on a GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@dataclass
class Timing:
    """Seconds per call: median, p90 and every timed run; the first call's time; peak device memory (MiB)."""

    median_s: float
    p90_s: float
    runs_s: list[float]
    warmup: int
    first_call_s: float
    peak_mem_mib: float | None = None
    resident_mem_mib: float | None = None


def _p90(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)]


def measure(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int, max_s: float,
            min_repeats: int = 3) -> Timing:
    """Warm up (at least once, up to ``warmup`` calls or a quarter of ``max_s``), then time up to ``repeats``
    calls, stopping early once ``max_s`` is spent and ``min_repeats`` are done."""
    _sync(device)
    resident = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = _timed(fn, device)
    spent, done = first, 1
    while done < warmup and spent < max_s / 4:
        spent += _timed(fn, device)
        done += 1
    runs: list[float] = []
    while len(runs) < max(1, repeats) and (len(runs) < min(min_repeats, repeats) or sum(runs) < max_s):
        runs.append(_timed(fn, device))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Timing(statistics.median(runs), _p90(runs), runs, done, first, peak, resident)


# ------------------------------------------------------------------------------------------------ correctness

def compare(fast: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Fast-path output against the fp32 reference, both (B, 3, H, W) in [-1, 1]: worst and mean per-face PSNR
    (RGB, unquantised, on the clamped images), and the relative L2 error of the raw outputs."""
    from .metrics.full_reference import psnr

    a, b = fast.detach().double().cpu(), ref.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return {"psnr_min_db": float("nan"), "psnr_mean_db": float("nan"), "rel_err": float("nan"), "finite": False}
    p = psnr((a.clamp(-1, 1) + 1) / 2, (b.clamp(-1, 1) + 1) / 2, channel="rgb", quantize=False)
    p = p.clamp(max=200.0)
    rel = (a - b).norm() / b.norm().clamp_min(1e-12)
    return {"psnr_min_db": float(p.min()), "psnr_mean_db": float(p.mean()), "rel_err": float(rel), "finite": True}


# ------------------------------------------------------------------------------------------------ compile

def compile_regions(modules: Sequence[nn.Module]) -> list[str]:
    """Compile (in place, static shapes) the repeated blocks of each module; returns the block class names used."""
    import torch._dynamo as dynamo

    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 256))
    used: set[str] = set()
    for root in modules:
        names = tuple(getattr(root, "_repeated_blocks", ())) or REGIONS.get(type(root).__name__, ())
        done: list[nn.Module] = []
        for m in root.modules():
            if type(m).__name__ in names and not any(_contains(d, m) for d in done):
                m.compile(dynamic=False)
                done.append(m)
                used.add(type(m).__name__)
    return sorted(used)


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def _uncompile(modules: Sequence[nn.Module]) -> None:
    for root in modules:
        for m in root.modules():
            if getattr(m, "_compiled_call_impl", None) is not None:
                m._compiled_call_impl = None


def _set_channels_last(modules: Sequence[nn.Module], on: bool) -> None:
    fmt = torch.channels_last if on else torch.contiguous_format
    for root in modules:
        for m in root.modules():
            for p in m.parameters(recurse=False):
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=fmt)


# ------------------------------------------------------------------------------------------------ subjects

@dataclass
class Subject:
    """One pipeline under test: ``run(faces, dtype, steps)`` restores faces (B, 3, size, size) in [-1, 1]."""

    name: str
    size: int
    modules: list[nn.Module]
    run: Callable[..., torch.Tensor]
    params_m: float
    stepped: bool = False  # PGDiff: time depends on the step count
    about: str = ""


def _build(cls, cfg, device: torch.device, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(cfg)
    return randomize_(model, seed).eval()


def _count(mods: Sequence[nn.Module]) -> float:
    return sum(p.numel() for m in mods for p in m.parameters()) / 1e6


def _vspbfr(device: torch.device, tiny: bool, seed: int) -> Subject:
    from .models.code_diffuser import CodeDiffuser, CodeDiffuserConfig
    from .models.e4e import E4EConfig, Encoder4Editing
    from .models.smart import RestorationNet, RestorationNetConfig
    from .models.stylegan2 import Generator, GeneratorConfig
    from .pipelines.vspbfr import VSPBFRPipeline

    if tiny:
        cfgs = (E4EConfig(n_styles=10, style_dim=16, input_size=64, units=(1, 1, 1, 1), depths=(8, 12, 16, 20), se_reduction=4),
                GeneratorConfig(size=64, style_dim=16, n_mlp=2, channel_max=16), CodeDiffuserConfig(latent_dim=16),
                RestorationNetConfig(size=32, style_dim=16, n_mlp=2, channel_max=16))
    else:
        cfgs = (E4EConfig(), GeneratorConfig(), CodeDiffuserConfig(), RestorationNetConfig())
    mods = [_build(c, cfg, device, seed + i) for i, (c, cfg) in
            enumerate(zip((Encoder4Editing, Generator, CodeDiffuser, RestorationNet), cfgs))]
    pipes: dict[torch.dtype, VSPBFRPipeline] = {}

    def run(faces: torch.Tensor, dtype: torch.dtype, steps: int | None = None) -> torch.Tensor:
        if dtype not in pipes:
            pipes[dtype] = VSPBFRPipeline(*mods, device=device, dtype=dtype)
        return pipes[dtype].restore_faces(faces, seed=seed)

    return Subject("VSPBFR", cfgs[3].size, mods, run, _count(mods),
                   about="e4e → code diffuser (4 steps) → StyleGAN2 bank to 512 px → SMART restorer")


def _pltrans(device: torch.device, tiny: bool, seed: int) -> Subject:
    from .models.pltrans import PLTrans, PLTransConfig
    from .pipelines.pltrans import PLTransPipeline

    if tiny:
        cfg = PLTransConfig(resolution=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=32,
                            num_heads=4, norm_groups=8, n_embed=64, embed_dim=32, top_d=8, prior_heads=4, lt_blocks=1,
                            lt_mlp_ratio=2, cross_blocks=2, cross_heads=4, latent_channels=4, mapper_channels=16,
                            unet_channels=16, unet_channel_mult=(1, 2), unet_res_blocks=1, unet_attn_resolutions=(4,),
                            unet_head_channels=8, dwt_levels=2)
    else:
        cfg = PLTransConfig()
    model = _build(PLTrans, cfg, device, seed)
    pipes: dict[torch.dtype, PLTransPipeline] = {}

    def run(faces: torch.Tensor, dtype: torch.dtype, steps: int | None = None) -> torch.Tensor:
        if dtype not in pipes:
            pipes[dtype] = PLTransPipeline(model, device=device, dtype=dtype)
        return pipes[dtype].restore_faces(faces, seed=seed)

    p = PLTransPipeline(model, device=device)
    return Subject("PLTrans", cfg.resolution, [model], run, _count([model]),
                   about=f"encode → latent regulariser (n={p.n}, s={p.s}, {p.steps} steps) → prior → cross-attend → decode")


def _pgdiff(device: torch.device, tiny: bool, seed: int) -> Subject:
    from .guidance import presets
    from .models.adm_unet import ADMUNet, ADMUNetConfig
    from .models.rrdb_restorer import RRDBRestorer, RRDBRestorerConfig
    from .pipelines.pgdiff import restore

    if tiny:
        ucfg = ADMUNetConfig(image_size=32, model_channels=16, channel_mult=(1, 2), num_res_blocks=(1, 1),
                             attention_resolutions=(16,), num_head_channels=16, norm_groups=8)
        rcfg = RRDBRestorerConfig(mid_channels=8, num_blocks=1, growth_channels=4)
    else:
        ucfg, rcfg = ADMUNetConfig(), RRDBRestorerConfig()
    unet, restorer = _build(ADMUNet, ucfg, device, seed), _build(RRDBRestorer, rcfg, device, seed + 1)

    def run(faces: torch.Tensor, dtype: torch.dtype, steps: int | None = None) -> torch.Tensor:
        return restore(unet, faces, presets.restoration(restorer), steps=int(steps or 25), seed=seed,
                       dtype=None if dtype == torch.float32 else dtype)

    return Subject("PGDiff", ucfg.image_size, [unet, restorer], run, _count([unet, restorer]), stepped=True,
                   about="DifFace ADM UNet + RRDB restorer each step, restoration guidance (DDPM, respaced)")


_BUILDERS = {"vspbfr": _vspbfr, "pltrans": _pltrans, "pgdiff": _pgdiff}


# ------------------------------------------------------------------------------------------------ the run

@dataclass
class _Run:
    settings: BenchSettings
    device: torch.device
    dtype: torch.dtype
    batches: list[int]
    warmup: int
    repeats: int
    max_case_s: float
    check_n: int
    probe_steps: int
    started: float
    out_dir: Path | None
    doc: dict[str, Any] = field(default_factory=dict)

    def over_budget(self) -> bool:
        b = self.settings.budget_s
        return b is not None and time.perf_counter() - self.started > b

    def save(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "bench.json").write_text(json.dumps(self.doc, indent=1, default=str))
        (self.out_dir / "bench.md").write_text(bench_markdown(self.doc))

    def skip(self, pipeline: str, variant: str, reason: str) -> None:
        log.warning("skip %s %s: %s", pipeline, variant, reason)
        self.doc["skipped"].append({"pipeline": pipeline, "variant": variant, "reason": reason})
        self.save()


def _dtype_name(d: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[d]


def _reference(s: Subject, faces: torch.Tensor, steps: int | None) -> torch.Tensor:
    """The fp32 eager output (TF32 off, so the reference is full fp32 on a GPU too)."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            return s.run(faces, torch.float32, steps).float().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _bench_variant(r: _Run, s: Subject, variant: str, ref: torch.Tensor | None, check_steps: int | None,
                   check_faces: torch.Tensor) -> None:
    """Check then time one variant of a subject at every batch size (and step count for PGDiff)."""
    dtype = r.dtype
    check: dict[str, Any]
    t0 = time.perf_counter()
    if ref is None:
        check = {"against": "itself (the fast path is the fp32 eager reference)", "passed": True}
        first_s = None
    else:
        with torch.no_grad():
            fast = s.run(check_faces, dtype, check_steps).float().cpu()
        check = {"against": f"fp32 eager, {len(check_faces)} fixed faces" + (f", {check_steps} steps" if check_steps else ""),
                 **compare(fast, ref)}
        check["passed"] = bool(check["finite"] and check["psnr_min_db"] >= PSNR_GATE_DB)
        first_s = time.perf_counter() - t0
    log.info("%s %s check: %s", s.name, variant, check)
    base = {"pipeline": s.name, "variant": variant, "dtype": _dtype_name(dtype), "size": s.size, "check": check,
            "params_m": round(s.params_m, 2)}
    if variant == "compiled":
        base["compile_and_check_s"] = first_s
    for batch in r.batches:
        if r.over_budget():
            r.skip(s.name, f"{variant} b{batch}", "time budget (--budget-s) spent")
            continue
        faces = fixed_faces(batch, s.size, r.settings.seed + 1).to(r.device)
        if not s.stepped:
            t = _measure(r, lambda: s.run(faces, dtype, None))
            r.doc["results"].append(_row(base, batch, None, t, "measured"))
            r.save()
            continue
        probe = _measure(r, lambda: s.run(faces, dtype, r.probe_steps))
        step = Timing(probe.median_s / r.probe_steps, probe.p90_s / r.probe_steps, [x / r.probe_steps for x in probe.runs_s],
                      probe.warmup, probe.first_call_s, probe.peak_mem_mib, probe.resident_mem_mib)
        r.doc["results"].append(_row(base, batch, 1, step, f"per step, from {r.probe_steps}-step runs"))
        for k in r.settings.pgdiff_steps:
            est = k * step.median_s
            if 4 * est <= r.max_case_s and not r.over_budget():
                t = _measure(r, lambda: s.run(faces, dtype, k))
                r.doc["results"].append(_row(base, batch, k, t, "measured"))
            else:
                ext = Timing(est, k * step.p90_s, [], 0, 0.0, step.peak_mem_mib, step.resident_mem_mib)
                r.doc["results"].append(_row(base, batch, k, ext, f"extrapolated: {k} × step time"))
            r.save()


def _measure(r: _Run, fn: Callable[[], Any]) -> Timing:
    with torch.no_grad():
        return measure(fn, r.device, warmup=r.warmup, repeats=r.repeats, max_s=r.max_case_s)


def _row(base: dict[str, Any], batch: int, steps: int | None, t: Timing, method: str) -> dict[str, Any]:
    return {**base, "batch": batch, "steps": steps, "method": method,
            "median_s": t.median_s, "p90_s": t.p90_s, "s_per_img": t.median_s / batch, "p90_s_per_img": t.p90_s / batch,
            "img_per_s": batch / t.median_s if t.median_s > 0 else None, "warmup": t.warmup, "repeats": len(t.runs_s),
            "runs_s": [round(x, 6) for x in t.runs_s], "first_call_s": t.first_call_s,
            "peak_mem_mib": t.peak_mem_mib, "resident_mem_mib": t.resident_mem_mib}


def _bench_faces(r: _Run) -> None:
    """The faces path on a 1080p frame: detection (random weights, frame shrunk to ≤ 640 px), the crop of one
    face, and paste-back (one face, with colour matching, four faces)."""
    from .errors import WeightsError
    from .faces import crop_faces
    from .faces.bench import bench_detect, bench_faces, synthetic_faces

    h, w = (1080, 1920) if not r.settings.tiny else (108, 192)
    face = 300.0 if not r.settings.tiny else 30.0
    reps = dict(repeats=r.repeats, warmup=max(1, r.warmup))
    tools = bench_faces(device=r.device, kind=FACE_DETECTORS[0], height=h, width=w, face_size=face, **reps)
    row: dict[str, Any] = {"pipeline": "faces", "frame": tools["frame"], "face_size": face, "crop_size": 512,
                           "detect": {FACE_DETECTORS[0]: tools["detect_ms_per_frame"]},
                           **{k: v for k, v in tools.items() if k.startswith("paste_")}}
    for kind in FACE_DETECTORS[1:]:
        try:
            row["detect"][kind] = bench_detect(kind=kind, device=r.device, height=h, width=w, **reps)["ms_per_frame"]
        except (ImportError, WeightsError) as e:
            r.doc["skipped"].append({"pipeline": "faces", "variant": f"detect {kind}", "reason": str(e).splitlines()[0]})
    frame = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(r.settings.seed)).to(r.device)
    faces = synthetic_faces(1, 1, h, w, face, 512)
    t = _measure(r, lambda: crop_faces(frame, faces, device=r.device, output_device=r.device))
    row.update(crop_ms_per_face=t.median_s * 1000, crop_p90_ms=t.p90_s * 1000)
    r.doc["faces"] = row
    r.save()


def _defaults(s: BenchSettings, device: torch.device) -> tuple[list[int], int, int, float, int, int]:
    gpu = device.type == "cuda"
    batches = list(s.batches) if s.batches else ([1, 16] if gpu and not s.tiny else [1] if not s.tiny else [1, 2])
    warmup = s.warmup if s.warmup is not None else (10 if gpu else 1)
    repeats = s.repeats if s.repeats is not None else (50 if gpu else 5)
    max_s = s.max_case_s if s.max_case_s is not None else (2.0 if s.tiny else 20.0 if gpu else 120.0)
    check_n = s.check_faces if s.check_faces is not None else (16 if gpu and not s.tiny else 2)
    probe = s.probe_steps if s.probe_steps is not None else (10 if gpu else 2)
    return batches, warmup, repeats, max_s, check_n, probe


def run_bench(settings: BenchSettings, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON document (also written, after every case, to ``out_dir``)."""
    bad = [p for p in settings.pipelines if p not in PIPELINES]
    if bad or not settings.pipelines:
        raise InputError(f"unknown pipeline(s) {', '.join(bad) or '(none)'}; choose from {', '.join(PIPELINES)}.")
    if any(k < 2 or k > 1000 for k in settings.pgdiff_steps):
        raise InputError(f"PGDiff step counts must be between 2 and 1000, got {list(settings.pgdiff_steps)}.")
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    batches, warmup, repeats, max_s, check_n, probe = _defaults(settings, device)
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # random weights can leave subnormal activations, which are slow on CPUs
    r = _Run(settings, device, dtype, batches, warmup, repeats, max_s, check_n, probe, time.perf_counter(),
             None if out_dir is None else Path(out_dir))
    r.doc = {
        "schema": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": bench_command(settings),
        "hardware": hardware_info(device),
        "settings": {**asdict(settings), "batches": batches, "warmup": warmup, "repeats": repeats, "max_case_s": max_s,
                     "check_faces": check_n, "probe_steps": probe, "fast_dtype": _dtype_name(dtype),
                     "psnr_gate_db": PSNR_GATE_DB, "weights": "random (seeded)"},
        "results": [], "skipped": [], "faces": None, "pipelines": {}, "verdicts": {},
    }
    try:
        for name in settings.pipelines:
            if r.over_budget():
                r.skip(name, "all", "time budget (--budget-s) spent")
            elif name == "faces":
                _bench_faces(r)
            else:
                _bench_pipeline(r, name)
    finally:
        torch.set_num_threads(threads)
        if device.type == "cpu":
            torch.set_flush_denormal(False)
    r.doc["verdicts"] = _verdicts(r.doc["results"])
    r.doc["total_s"] = round(time.perf_counter() - r.started, 1)
    r.save()
    return r.doc


def _bench_pipeline(r: _Run, name: str) -> None:
    """Build one pipeline, then check and time its eager path and each requested variant."""
    try:
        t = time.perf_counter()
        s = _BUILDERS[name](r.device, r.settings.tiny, r.settings.seed)
        build_s = time.perf_counter() - t
    except ImportError as e:
        r.skip(name, "all", f"a package it needs is missing: {e}")
        return
    r.doc["pipelines"][s.name] = {"params_m": round(s.params_m, 2), "size": s.size, "about": s.about,
                                  "build_s": round(build_s, 2)}
    # the check runs the shortest PGDiff schedule, except on the CPU, where that takes minutes: the probe's
    check_steps = None if not s.stepped else r.probe_steps if r.device.type == "cpu" else min(r.settings.pgdiff_steps)
    faces = fixed_faces(r.check_n, s.size, r.settings.seed).to(r.device)
    variants = [v for v, on in (("compiled", r.settings.compile), ("channels_last", r.settings.channels_last)) if on]
    eager_is_reference = r.dtype == torch.float32 and r.device.type == "cpu"
    ref = None if eager_is_reference and not variants else _reference(s, faces, check_steps)
    _bench_variant(r, s, "eager", None if eager_is_reference else ref, check_steps, faces)
    for variant in variants:
        if r.over_budget():
            r.skip(s.name, variant, "time budget (--budget-s) spent")
            continue
        if variant == "compiled":
            r.doc["pipelines"][s.name]["compiled_blocks"] = compile_regions(s.modules)
        else:
            _set_channels_last(s.modules, True)
        try:
            _bench_variant(r, s, variant, ref, check_steps, faces)
        except Exception as e:  # a compiler failure is a result to report, not a reason to lose the others
            log.exception("%s %s failed", s.name, variant)
            r.skip(s.name, variant, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        finally:
            if variant == "compiled":
                _uncompile(s.modules)
            else:
                _set_channels_last(s.modules, False)


def bench_command(s: BenchSettings) -> str:
    """The ``bfr bench`` command line that repeats a run with these settings (output folder aside)."""
    d = BenchSettings()

    def join(v: Sequence[Any] | None) -> str | None:
        return None if v is None else ",".join(map(str, v))

    parts = ["bfr", "bench"]
    for flag, value, default in (
            ("--pipelines", join(s.pipelines), join(d.pipelines)), ("--device", s.device, d.device),
            ("--dtype", s.dtype, d.dtype), ("--batch", join(s.batches), None),
            ("--pgdiff-steps", join(s.pgdiff_steps), join(d.pgdiff_steps)), ("--warmup", s.warmup, None),
            ("--repeats", s.repeats, None), ("--max-case-s", s.max_case_s, None), ("--budget-s", s.budget_s, None),
            ("--threads", s.threads, None)):
        if value is not None and value != default:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    parts += [flag for flag, on in (("--compile", s.compile), ("--channels-last", s.channels_last), ("--tiny", s.tiny)) if on]
    return " ".join(parts)


def _verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per pipeline and variant: the speed-up over eager (median over the matching measured rows), and whether
    to keep it (checked, and at least 5% faster)."""
    out: dict[str, Any] = {}
    eager = {(x["pipeline"], x["batch"], x["steps"]): x for x in rows if x["variant"] == "eager"}
    for x in rows:
        if x["variant"] == "eager" or x["method"] != "measured":
            continue
        e = eager.get((x["pipeline"], x["batch"], x["steps"]))
        if e is None:
            continue
        out.setdefault(x["pipeline"], {}).setdefault(x["variant"], []).append(
            {"batch": x["batch"], "steps": x["steps"], "speedup": e["median_s"] / x["median_s"], "passed": x["check"]["passed"]})
    for p, variants in out.items():
        for v, cases in variants.items():
            sp = statistics.median(c["speedup"] for c in cases)
            ok = all(c["passed"] for c in cases)
            variants[v] = {"cases": cases, "median_speedup": sp, "keep": bool(ok and sp >= 1.05)}
    return out


# ------------------------------------------------------------------------------------------------ report

def _fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1000:.1f} ms"


def bench_markdown(doc: dict[str, Any]) -> str:
    """The README's section: when, how and on what it was measured, then one row per pipeline, step count,
    batch and variant (speeds of rows that passed the correctness check only), the faces path and verdicts."""
    hw, st = doc["hardware"], doc["settings"]
    gpu = hw["device"].startswith("cuda")
    total = f" ({doc['total_s'] / 60:.1f} min in all)" if doc.get("total_s") is not None else ""
    sizes = "".join(f"{n} px " for n in sorted({p["size"] for p in doc["pipelines"].values()}))
    lines = [f"Measured {doc['created'][:10]} with `{doc['command']}`{total}.", "",
             f"Hardware: {_hardware_line(hw)}.", "",
             f"Protocol: {sizes}aligned faces, {st['fast_dtype']}, warm-up {st['warmup']}, median/p90 of up to {st['repeats']} runs "
             f"(≤ {st['max_case_s']:g} s per case), {'CUDA events' if gpu else 'perf_counter'}; "
             f"random {'TINY ' if st['tiny'] else 'full-size '}weights (speed does not depend on their values); "
             f"correctness: worst-face PSNR vs the fp32 eager reference ≥ {st['psnr_gate_db']:g} dB."]
    head = ["pipeline", "steps", "batch", "precision", "variant", "median s/img", "p90 s/img", "img/s"]
    head += ["peak mem", "vs fp32", "how"] if gpu else ["vs fp32", "how"]
    if doc["results"]:
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in doc["results"]:
        c = x["check"]
        if "psnr_min_db" not in c:
            verdict = "= reference"
        else:
            verdict = f"{'✓' if c['passed'] else '✗'} {c['psnr_min_db']:.1f} dB" if c["finite"] else "✗ non-finite"
        shown = c["passed"]
        cells = [x["pipeline"], "1 (per step)" if x["method"].startswith("per step") else str(x["steps"] or "—"),
                 str(x["batch"]), x["dtype"], x["variant"],
                 _fmt_time(x["s_per_img"]) if shown else "withheld (check failed)",
                 _fmt_time(x["p90_s_per_img"]) if shown else "—",
                 f"{x['img_per_s']:.3g}" if shown and x["img_per_s"] else "—"]
        if gpu:
            cells.append(f"{x['peak_mem_mib'] / 1024:.2f} GiB" if x["peak_mem_mib"] is not None else "—")
        how = f"measured ({x['repeats']} runs)" if x["method"] == "measured" else f"*{x['method']}*"
        lines.append("| " + " | ".join(cells + [verdict, how]) + " |")
    f = doc.get("faces")
    if f:
        cols = {f"detect {k} / frame": v for k, v in f["detect"].items()}
        cols.update({"crop / face": f["crop_ms_per_face"], "paste / face": f["paste_ms_per_face"],
                     "paste / face, colour-matched": f["paste_ms_per_face_color"],
                     "paste, 4 faces / frame": f["paste_ms_per_frame_4_faces"],
                     "frame copy (no faces)": f["paste_ms_no_faces"]})
        lines += ["", f"Faces path on a {f['frame']} frame ({f['face_size']:g} px faces, {f['crop_size']} px crops; "
                      "detectors with random weights on the frame shrunk to ≤ 640 px), median ms:", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                  "| " + " | ".join(f"{v:.2f}" for v in cols.values()) + " |"]
    v = doc.get("verdicts") or {}
    if v:
        lines += ["", "Variants against eager (median speed-up over the measured cases; kept when checked and ≥ 5% faster):", ""]
        for p, variants in v.items():
            for name, d in variants.items():
                lines.append(f"- {p} {name}: {d['median_speedup']:.2f}× → {'keep' if d['keep'] else 'do not keep'}")
    if doc.get("skipped"):
        lines += ["", "Skipped:", ""] + [f"- {s['pipeline']} {s['variant']}: {s['reason']}" for s in doc["skipped"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ command line

def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        vals = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{what} must be a comma-separated list of integers, got {text!r}.") from None
    if not vals or any(v < 1 for v in vals):
        raise InputError(f"{what} must list positive integers, got {text!r}.")
    return vals


def run_cli(args: Any) -> str:
    """``bfr bench``: run, write ``bench.json`` and ``bench.md`` into ``--output``; returns the Markdown."""
    settings = BenchSettings(
        pipelines=[p.strip() for p in args.pipelines.split(",") if p.strip()], device=args.device, dtype=args.dtype,
        batches=_ints(args.batch, "--batch"), pgdiff_steps=_ints(args.pgdiff_steps, "--pgdiff-steps") or (),
        compile=args.compile, channels_last=args.channels_last, tiny=args.tiny, warmup=args.warmup,
        repeats=args.repeats, max_case_s=args.max_case_s, budget_s=args.budget_s, threads=args.threads)
    doc = run_bench(settings, args.output)
    out = Path(args.output)
    return bench_markdown(doc) + f"\njson: {out / 'bench.json'}\nmarkdown: {out / 'bench.md'}\n"
