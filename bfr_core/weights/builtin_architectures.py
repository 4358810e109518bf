"""The architectures this package knows, in detection order.

Signatures are keys that only that architecture has, taken from the official state-dict layouts
(`tests/fixtures/official_layouts/`). Model modules are imported only when a match is built.
"""

from .architectures import Architecture, register

_M = "bfr_core.models."

# ----------------------------------------------------------------------------------------- PGDiff
register(Architecture(
    name="adm_unet",
    title="ADM/iDDPM UNet (DifFace face prior)",
    signature=("input_blocks.0.0.weight", "middle_block.1.qkv.weight", "out.2.weight", "time_embed.0.weight"),
    model=_M + "adm_unet:ADMUNet",
    config_from_state_dict=_M + "adm_unet:config_from_state_dict",
    prefixes=("", "ema.", "model.", "state_dict."),
))
register(Architecture(
    name="pgdiff_rrdb_restorer",
    title="PGDiff time-conditioned RRDB restorer",
    signature=("generator.conv_first.weight", "generator.conv_last.weight", "time_embed.0.weight"),
    model=_M + "rrdb_restorer:RRDBRestorer",
    config_from_state_dict=_M + "rrdb_restorer:config_from_state_dict",
    prefixes=("state_dict.", "params_ema.", "params.", ""),
))
register(Architecture(
    name="arcface_iresnet",
    title="insightface ArcFace iresnet",
    signature=("conv1.weight", "prelu.weight", "layer1.0.bn1.weight", "fc.weight", "features.weight"),
    model=_M + "arcface:IResNet",
    config_from_state_dict=_M + "arcface:config_from_state_dict",
    prefixes=("", "state_dict."),
))
