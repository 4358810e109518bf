"""The example workflows in ``workflows/``, written compactly; ``python -m tests.workflow_specs`` regenerates them.

A test checks that the committed files equal what these specs produce, and runs every workflow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACE = "bfr_example_face.png"
PHOTO = "grace_hopper.jpg"  # the public-domain portrait shipped in bfr_core/data

VSPBFR_LOADER = {"id": 2, "type": "BFRVSPBFRLoader", "widgets": {
    "style_encoder": "vspbfr-style-encoder (auto-download)",
    "code_diffuser": "vspbfr-code-diffuser (auto-download)",
    "restorer": "vspbfr-restoration-net (auto-download)",
}}

PGDIFF_PRIOR = {"id": 2, "type": "BFRPGDiffPriorLoader", "widgets": {"ddpm": "difface-ddpm-ffhq512 (auto-download)"}}
PGDIFF_RESTORER = {"id": 3, "type": "BFRPGDiffRestorerLoader", "widgets": {"restorer": "pgdiff-restorer-rrdb (auto-download)"}}


def _pgdiff(name: str, task: str, image_title: str, preset_links: dict, extra: list[dict] = ()) -> list[dict]:
    """LoadImage (1) → task preset (4) → Partial Guidance Sampler (5, 100 steps) → SaveImage (6), plus ``extra`` nodes."""
    return [
        {"id": 1, "type": "LoadImage", "widgets": {"image": FACE}, "title": image_title},
        PGDIFF_PRIOR,
        *extra,
        {"id": 4, "type": "BFRPGDiffTaskPreset", "widgets": {"task": task}, "links": preset_links},
        {"id": 5, "type": "BFRPartialGuidanceSampler", "widgets": {"steps": 100, "seed": 0},
         "links": {"prior": (2, 0), "image": (1, 0), "guidance": (4, 0)}},
        {"id": 6, "type": "SaveImage", "widgets": {"filename_prefix": name}, "links": {"images": (5, 0)}},
    ]


SPECS: dict[str, list[dict]] = {
    "pgdiff_restoration": _pgdiff("pgdiff_restoration", "restoration", "Aligned low-quality face crop",
                                  {"restorer": (3, 0)}, [PGDIFF_RESTORER]),
    "pgdiff_colorization": _pgdiff("pgdiff_colorization", "colorization", "Aligned grayscale face crop", {}),
    "pgdiff_inpainting": _pgdiff("pgdiff_inpainting", "inpainting",
                                 "Aligned face crop: paint the holes in the mask editor", {"mask": (1, 1)}),
    "pgdiff_old_photo": _pgdiff("pgdiff_old_photo", "old photo restoration",
                                "Aligned old photo crop: paint scratches in the mask editor",
                                {"restorer": (3, 0), "mask": (1, 1)}, [PGDIFF_RESTORER]),
    "pgdiff_reference": _pgdiff("pgdiff_reference", "reference-based restoration", "Aligned low-quality face crop",
                                {"restorer": (3, 0), "arcface": (7, 0), "reference": (8, 0)}, [
                                    PGDIFF_RESTORER,
                                    {"id": 7, "type": "BFRArcFaceLoader", "widgets": {"arcface": "arcface-ms1mv3-r50 (auto-download)"}},
                                    {"id": 8, "type": "LoadImage", "widgets": {"image": FACE},
                                     "title": "Reference: an aligned photo of the same person (choose yours)"},
                                ]),
    "pgdiff_vspbfr_target": [
        {"id": 1, "type": "LoadImage", "widgets": {"image": FACE}, "title": "Aligned low-quality face crop"},
        PGDIFF_PRIOR,
        {**VSPBFR_LOADER, "id": 3},
        {"id": 4, "type": "BFRVSPBFRRestore", "widgets": {"seed": 0}, "links": {"vspbfr": (3, 0), "image": (1, 0)},
         "title": "Another restorer gives the smooth semantics"},
        {"id": 5, "type": "BFRPGDiffGuidanceSmoothSemantics", "links": {"target_image": (4, 0)}},
        {"id": 6, "type": "BFRPartialGuidanceSampler", "widgets": {"steps": 100, "seed": 0},
         "links": {"prior": (2, 0), "image": (1, 0), "guidance": (5, 0)}},
        {"id": 7, "type": "SaveImage", "widgets": {"filename_prefix": "pgdiff_vspbfr_target"}, "links": {"images": (6, 0)}},
        {"id": 8, "type": "PreviewImage", "links": {"images": (4, 0)}, "title": "VSPBFR's restoration (the target)"},
    ],
    "pgdiff_guidance_chain": [  # terms composed by chaining their nodes (the sampler uses the chain's classic update, 0.1)
        {"id": 1, "type": "LoadImage", "widgets": {"image": FACE}, "title": "Aligned low-quality face crop"},
        PGDIFF_PRIOR,
        PGDIFF_RESTORER,
        {"id": 4, "type": "BFRPGDiffGuidanceSmoothSemantics", "links": {"restorer": (3, 0)}},
        {"id": 5, "type": "BFRPGDiffGuidanceColorStatistics", "links": {"guidance": (4, 0)},
         "title": "Colour statistics (CelebA-HQ's unless a reference is connected)"},
        {"id": 6, "type": "BFRPGDiffGuidanceGAN", "widgets": {"discriminator": "vspbfr-restoration-net (auto-download)"},
         "links": {"guidance": (5, 0)}, "title": "GAN guidance (paper §4.6, not in the released code)"},
        {"id": 7, "type": "BFRPartialGuidanceSampler", "widgets": {"steps": 100, "seed": 0},
         "links": {"prior": (2, 0), "image": (1, 0), "guidance": (6, 0)}},
        {"id": 8, "type": "SaveImage", "widgets": {"filename_prefix": "pgdiff_guidance_chain"}, "links": {"images": (7, 0)}},
    ],
    "faces_restore_pgdiff": [
        {"id": 1, "type": "LoadImage", "widgets": {"image": PHOTO}, "title": "Whole photo"},
        PGDIFF_PRIOR,
        PGDIFF_RESTORER,
        {"id": 4, "type": "BFRPGDiffFaceRestorer", "widgets": {"steps": 100}, "links": {"prior": (2, 0), "restorer": (3, 0)}},
        {"id": 5, "type": "BFRFaceDetectorLoader", "widgets": {"detector": "yunet (auto-download)"}},
        {"id": 6, "type": "BFRRestoreFaces", "widgets": {"seed": 0},
         "links": {"restorer": (4, 0), "detector": (5, 0), "image": (1, 0)}},
        {"id": 7, "type": "SaveImage", "widgets": {"filename_prefix": "faces_restored_pgdiff"}, "links": {"images": (6, 0)}},
        {"id": 8, "type": "PreviewImage", "links": {"images": (6, 2)}, "title": "Restored crops"},
    ],
    "pltrans_restore": [
        {"id": 1, "type": "LoadImage", "widgets": {"image": FACE}, "title": "Aligned face crop"},
        {"id": 2, "type": "BFRPLTransLoader", "widgets": {"model": "pltrans.safetensors"}},
        {"id": 3, "type": "BFRPLTransRestore", "widgets": {"seed": 0}, "links": {"pltrans": (2, 0), "image": (1, 0)}},
        {"id": 4, "type": "SaveImage", "widgets": {"filename_prefix": "pltrans"}, "links": {"images": (3, 0)}},
    ],
    "degrade": [
        {"id": 1, "type": "LoadImage", "widgets": {"image": FACE}},
        {"id": 2, "type": "BFRDegrade", "widgets": {"preset": "gfpgan", "seed": 42, "overrides": "scale=8, jpeg_quality=70"},
         "links": {"image": (1, 0)}},
        {"id": 3, "type": "SaveImage", "widgets": {"filename_prefix": "bfr_degraded"}, "links": {"images": (2, 0)}},
    ],
    "vspbfr_restore": [
        {"id": 1, "type": "LoadImage", "widgets": {"image": FACE}, "title": "Aligned face crop"},
        VSPBFR_LOADER,
        {"id": 3, "type": "BFRVSPBFRRestore", "widgets": {"seed": 0}, "links": {"vspbfr": (2, 0), "image": (1, 0)}},
        {"id": 4, "type": "SaveImage", "widgets": {"filename_prefix": "vspbfr"}, "links": {"images": (3, 0)}},
    ],
    "vspbfr_four_stages": [
        {"id": 1, "type": "LoadImage", "widgets": {"image": FACE}, "title": "Aligned face crop"},
        VSPBFR_LOADER,
        {"id": 3, "type": "BFRVSPBFRStyleEncoder", "links": {"vspbfr": (2, 0), "image": (1, 0)}},
        {"id": 4, "type": "BFRVSPBFRCodeDiffuser", "widgets": {"seed": 0}, "links": {"vspbfr": (2, 0), "codes": (3, 0)}},
        {"id": 5, "type": "BFRVSPBFRStyleGANBank", "widgets": {"seed": 0}, "links": {"vspbfr": (2, 0), "codes": (4, 0)}},
        {"id": 6, "type": "BFRVSPBFRSMARTRestorer", "widgets": {"seed": 0},
         "links": {"vspbfr": (2, 0), "image": (1, 0), "codes": (4, 0), "bank": (5, 0)}},
        {"id": 7, "type": "BFRVSPBFRInvertedImage", "widgets": {"seed": 0}, "links": {"vspbfr": (2, 0), "codes": (4, 0)},
         "title": "What the feature bank sees"},
        {"id": 8, "type": "SaveImage", "widgets": {"filename_prefix": "vspbfr_stages"}, "links": {"images": (6, 0)}},
        {"id": 9, "type": "PreviewImage", "links": {"images": (7, 0)}},
    ],
    "faces_vspbfr": [
        {"id": 1, "type": "LoadImage", "widgets": {"image": PHOTO}, "title": "Whole photo"},
        VSPBFR_LOADER,
        {"id": 3, "type": "BFRFaceDetectorLoader", "widgets": {"detector": "retinaface-resnet50 (auto-download)"}},
        {"id": 4, "type": "BFRFaceDetectCrop", "links": {"detector": (3, 0), "image": (1, 0)}},
        {"id": 5, "type": "BFRVSPBFRRestore", "widgets": {"seed": 0}, "links": {"vspbfr": (2, 0), "image": (4, 0)}},
        {"id": 6, "type": "BFRFacePasteBack", "links": {"image": (1, 0), "restored": (5, 0), "faces": (4, 1)}},
        {"id": 7, "type": "SaveImage", "widgets": {"filename_prefix": "faces_vspbfr"}, "links": {"images": (6, 0)}},
        {"id": 8, "type": "PreviewImage", "links": {"images": (5, 0)}, "title": "Restored crops"},
    ],
    "faces_restore_one_node": [
        {"id": 1, "type": "LoadImage", "widgets": {"image": PHOTO}, "title": "Whole photo"},
        VSPBFR_LOADER,
        {"id": 3, "type": "BFRFaceDetectorLoader", "widgets": {"detector": "yunet (auto-download)"}},
        {"id": 4, "type": "BFRRestoreFaces", "widgets": {"seed": 0},
         "links": {"restorer": (2, 0), "detector": (3, 0), "image": (1, 0)}},
        {"id": 5, "type": "SaveImage", "widgets": {"filename_prefix": "faces_restored"}, "links": {"images": (4, 0)}},
        {"id": 6, "type": "PreviewImage", "links": {"images": (4, 2)}, "title": "Restored crops"},
    ],
    "faces_compact": [  # the offline one: the compact restorer and the MTCNN detector ship with the pack
        {"id": 1, "type": "LoadImage", "widgets": {"image": PHOTO}, "title": "Whole photo"},
        {"id": 2, "type": "BFRCompactLoader", "widgets": {"model": "built-in (ships with the pack)"}},
        {"id": 3, "type": "BFRFaceDetectorLoader", "widgets": {"detector": "mtcnn (built-in)"}},
        {"id": 4, "type": "BFRRestoreFaces", "widgets": {"seed": 0},
         "links": {"restorer": (2, 0), "detector": (3, 0), "image": (1, 0)}},
        {"id": 5, "type": "SaveImage", "widgets": {"filename_prefix": "faces_compact"}, "links": {"images": (4, 0)}},
        {"id": 6, "type": "PreviewImage", "links": {"images": (4, 2)}, "title": "Restored crops"},
    ],
}


def render_all(object_info: dict) -> dict[str, str]:
    from tests.workflow_tools import build_ui

    return {name: json.dumps(build_ui(spec, object_info), indent=1) + "\n" for name, spec in SPECS.items()}


def main() -> int:
    import tempfile

    from tests import comfy_harness
    from tests.workflow_tools import object_info_from_nodes

    info = object_info_from_nodes(comfy_harness.load_pack(Path(tempfile.mkdtemp())))
    for name, text in render_all(info).items():
        (REPO / "workflows" / f"{name}.json").write_text(text)
        print("wrote", f"workflows/{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
