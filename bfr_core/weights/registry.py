"""Known checkpoints: where each official file lives, what it contains, and under which licence.

Revisions: where a Hub commit is known it is pinned here; where it is not (we could not reach the Hub
when this table was written), the entry follows ``main`` and the first successful download is pinned
locally in the weights lock file (commit and sha256), so every later use is verified against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class HubSource:
    """A file in a Hugging Face Hub repository (``repo_type`` ``"model"`` or ``"space"``)."""

    repo_id: str
    filename: str
    revision: str | None = None
    repo_type: str = "model"

    def describe(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"https://huggingface.co/{kind}{self.repo_id}/blob/{self.revision or 'main'}/{self.filename}"


@dataclass(frozen=True)
class UrlSource:
    """A file at a plain HTTPS URL (GitHub releases, Google Drive direct links)."""

    url: str

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class PackagedSource:
    """A file shipped inside the package, in ``bfr_core/data``: present on every install, never downloaded."""

    filename: str

    def path(self) -> Path:
        return Path(__file__).resolve().parents[1] / "data" / self.filename

    def describe(self) -> str:
        return f"bfr_core/data/{self.filename} (shipped with the package)"


@dataclass(frozen=True)
class KnownCheckpoint:
    """One downloadable checkpoint file."""

    id: str
    filename: str
    sources: tuple[HubSource | UrlSource | PackagedSource, ...]
    architectures: tuple[str, ...]
    licence: str
    description: str
    sha256: str | None = None
    size: int | None = None
    licence_url: str = ""
    non_commercial: bool = False
    homepage: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def licence_notice(self) -> str:
        """A one-line notice shown wherever this checkpoint is loaded."""
        nc = " Non-commercial use only." if self.non_commercial else ""
        url = f" ({self.licence_url})" if self.licence_url else ""
        return f"{self.id}: {self.licence}{url}.{nc}"


_VSPBFR_HOME = "https://github.com/LonglongaaaGo/VSPBFR"
_PGDIFF_HOME = "https://github.com/pq-yang/PGDiff"
_SLAB = "NTU S-Lab License 1.0"
_SLAB_URL = "https://github.com/pq-yang/PGDiff/blob/main/LICENSE"

KNOWN: dict[str, KnownCheckpoint] = {c.id: c for c in (
    KnownCheckpoint(
        id="vspbfr-style-encoder",
        filename="style_encoder_decoder.pt",
        sources=(HubSource("Wanglong2/VSPBFR", "style_encoder_decoder.pt"),),
        architectures=("vspbfr_e4e_encoder", "stylegan2_generator"),
        licence="MIT (VSPBFR); the StyleGAN2 decoder weights derive from NVIDIA's FFHQ model (NVIDIA Source Code License-NC)",
        licence_url="https://huggingface.co/Wanglong2/VSPBFR",
        non_commercial=True,
        description="VSPBFR stage 1: e4e style encoder fine-tuned on degraded faces, with its StyleGAN2-1024 decoder (the facial feature bank).",
        homepage=_VSPBFR_HOME,
    ),
    KnownCheckpoint(
        id="vspbfr-code-diffuser",
        filename="code_diffuser.pt",
        sources=(HubSource("Wanglong2/VSPBFR", "code_diffuser.pt"),),
        architectures=("vspbfr_code_diffuser",),
        licence="MIT",
        licence_url="https://huggingface.co/Wanglong2/VSPBFR",
        description="VSPBFR stage 2: the 4-step W+ code diffuser (4 TACC blocks).",
        homepage=_VSPBFR_HOME,
    ),
    KnownCheckpoint(
        id="vspbfr-restoration-net",
        filename="restoration_net.pt",
        sources=(HubSource("Wanglong2/VSPBFR", "restoration_net.pt"),),
        architectures=("vspbfr_restoration_net", "vspbfr_discriminator"),
        licence="MIT",
        licence_url="https://huggingface.co/Wanglong2/VSPBFR",
        description="VSPBFR stage 3: the SMART restoration auto-encoder (EMA weights g_ema) and its discriminator.",
        homepage=_VSPBFR_HOME,
    ),
    KnownCheckpoint(
        id="vspbfr-arcface",
        filename="Arcface.pth",
        sources=(HubSource("Wanglong2/VSPBFR", "Arcface.pth"),),
        architectures=("faceshifter_arcface_r101",),
        licence="unspecified (FaceShifter identity network redistributed with VSPBFR)",
        non_commercial=True,
        description="Identity network used by VSPBFR's training losses (torchvision ResNet-101 with 256 outputs).",
        homepage=_VSPBFR_HOME,
    ),
    KnownCheckpoint(
        id="difface-ddpm-ffhq512",
        filename="iddpm_ffhq512_ema500000.pth",
        sources=(
            HubSource("OAOA/DifFace", "weights/diffusion/iddpm_ffhq512_ema500000.pth", repo_type="space"),
            UrlSource("https://github.com/zsyOAOA/DifFace/releases/download/V1.0/iddpm_ffhq512_ema500000.pth"),
        ),
        architectures=("adm_unet",),
        licence=_SLAB,
        licence_url="https://github.com/zsyOAOA/DifFace/blob/master/LICENSE",
        non_commercial=True,
        description="DifFace's FFHQ-512 iDDPM (EMA at 500k steps): the face prior PGDiff samples from.",
        homepage="https://github.com/zsyOAOA/DifFace",
    ),
    KnownCheckpoint(
        id="pgdiff-restorer-rrdb",
        filename="rrdb_iter_100000.pth",
        sources=(UrlSource("https://drive.usercontent.google.com/download?id=1XlpB873rHCn-T5UfUCXq_fAprhuBKR30&export=download&confirm=t"),),
        architectures=("pgdiff_rrdb_restorer",),
        licence=_SLAB,
        licence_url=_SLAB_URL,
        non_commercial=True,
        description="PGDiff's time-conditioned RRDB restorer that gives the smooth-semantics target.",
        homepage=_PGDIFF_HOME,
        notes=("Hosted on Google Drive only; if the direct link is refused, download it from the PGDiff README and place it in models/bfr/.",),
    ),
    KnownCheckpoint(
        id="arcface-ms1mv3-r50",
        filename="ms1mv3_arcface_r50_fp16.pth",
        sources=(UrlSource("https://drive.usercontent.google.com/download?id=11l24OkqWWEm3OLNdUFA7StulJZ_m4pEX&export=download&confirm=t"),),
        architectures=("arcface_iresnet",),
        licence="insightface model zoo licence (non-commercial research only)",
        licence_url="https://github.com/deepinsight/insightface/tree/master/recognition/arcface_torch",
        non_commercial=True,
        description="insightface ArcFace iresnet50 (MS1MV3): identity guidance in PGDiff and the identity metric.",
        homepage="https://github.com/deepinsight/insightface",
        notes=("Hosted on Google Drive only; if the direct link is refused, download it from insightface's model zoo and place it in models/bfr/.",),
    ),
    KnownCheckpoint(
        id="vgg16-imagenet",
        filename="vgg16-397923af.pth",
        sources=(UrlSource("https://download.pytorch.org/models/vgg16-397923af.pth"),),
        architectures=("torchvision_vgg16",),
        licence=("BSD-3-Clause (torchvision); the ImageNet-trained weights may carry their own terms, which torchvision "
                 "leaves to the user to determine"),
        licence_url="https://github.com/pytorch/vision/blob/main/LICENSE",
        description="torchvision's ImageNet VGG16 (IMAGENET1K_V1): the features of PGDiff's perceptual guidance.",
        homepage="https://pytorch.org/vision/stable/models/generated/torchvision.models.vgg16.html",
        notes=("Built by bfr_core.pipelines.pgdiff.vgg_features, not by load_model.",
               "The file name's hex (397923af) is the start of its sha256; the full hash is pinned at first download."),
    ),
    KnownCheckpoint(
        id="retinaface-resnet50",
        filename="detection_Resnet50_Final.pth",
        sources=(UrlSource("https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"),),
        architectures=("retinaface",),
        licence="MIT",
        licence_url="https://github.com/xinntao/facexlib/blob/master/LICENSE",
        description="RetinaFace (ResNet-50) face detector with five landmarks, as facexlib distributes it.",
        homepage="https://github.com/xinntao/facexlib",
    ),
    KnownCheckpoint(
        id="retinaface-mobilenet0.25",
        filename="detection_mobilenet0.25_Final.pth",
        sources=(UrlSource("https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth"),),
        architectures=("retinaface",),
        licence="MIT",
        licence_url="https://github.com/xinntao/facexlib/blob/master/LICENSE",
        description="RetinaFace (MobileNet-0.25) face detector with five landmarks: small and fast.",
        homepage="https://github.com/xinntao/facexlib",
    ),
    KnownCheckpoint(
        id="yunet",
        filename="yunet_final.pth",
        sources=(
            HubSource("kornia/yunet", "yunet_final.pth"),
            UrlSource("https://github.com/kornia/data/raw/main/yunet_final.pth"),
        ),
        architectures=("yunet",),
        licence="MIT",
        licence_url="https://github.com/ShiqiYu/libfacedetection.train/blob/master/LICENSE",
        description="YuNet face detector with five landmarks (kornia.contrib.FaceDetector): pure PyTorch, tiny.",
        sha256="ee0a3035c5cbfc9484a31332223c9fd9c0ddcdb7c46b6a19e558ed393b6f2c67",
        size=405_729,
        homepage="https://github.com/ShiqiYu/libfacedetection.train",
    ),
    KnownCheckpoint(
        id="mtcnn",
        filename="mtcnn_facenet_pytorch.safetensors",
        sources=(PackagedSource("mtcnn_facenet_pytorch.safetensors"),),
        architectures=("mtcnn",),
        licence="MIT (facenet-pytorch 2.6.0 weights; MTCNN by Zhang et al. 2016)",
        licence_url="https://github.com/timesler/facenet-pytorch/blob/master/LICENSE.md",
        description="MTCNN face detector with five landmarks, shipped with the package: whole photos work offline.",
        sha256="37125c93c2d1e69f3bf9d1d4ea4af980dcb29d308adc996782391a6554fbc0ec",
        size=1_988_152,
        homepage="https://github.com/timesler/facenet-pytorch",
    ),
    KnownCheckpoint(
        id="parsing-parsenet",
        filename="parsing_parsenet.pth",
        sources=(UrlSource("https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/parsing_parsenet.pth"),),
        architectures=("parsenet",),
        licence="MIT (facexlib ParseNet)",
        licence_url="https://github.com/xinntao/facexlib/blob/master/LICENSE",
        description="ParseNet face-parsing network: soft face masks for seamless paste-back.",
        homepage="https://github.com/xinntao/facexlib",
    ),
    KnownCheckpoint(
        id="parsing-bisenet",
        filename="parsing_bisenet.pth",
        sources=(UrlSource("https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth"),),
        architectures=("bisenet",),
        licence="MIT",
        licence_url="https://github.com/xinntao/facexlib/blob/master/LICENSE",
        description="BiSeNet face-parsing network (facexlib): soft face masks for seamless paste-back.",
        homepage="https://github.com/xinntao/facexlib",
    ),
)}


def known(checkpoint_id: str) -> KnownCheckpoint:
    """The registry entry for ``checkpoint_id``, with a helpful error listing the ids."""
    from ..errors import WeightsError

    try:
        return KNOWN[checkpoint_id]
    except KeyError:
        raise WeightsError(f"unknown checkpoint id {checkpoint_id!r}; known ids: {', '.join(sorted(KNOWN))}.") from None


def find_by_filename(filename: str) -> KnownCheckpoint | None:
    """The registry entry whose file is called ``filename`` (e.g. a file a user placed by hand)."""
    for entry in KNOWN.values():
        if entry.filename == filename:
            return entry
    return None
