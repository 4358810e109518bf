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

SPECS: dict[str, list[dict]] = {
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
