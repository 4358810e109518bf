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
register(Architecture(
    name="faceshifter_arcface_r101",
    title="FaceShifter identity network (torchvision ResNet-101/256, VSPBFR's Arcface.pth)",
    signature=("conv1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer4.0.downsample.0.weight", "fc.weight"),
    model=_M + "faceshifter_arcface:FaceShifterArcFace",
    config_from_state_dict=_M + "faceshifter_arcface:config_from_state_dict",
    prefixes=("", "state_dict."),
))

# ----------------------------------------------------------------------------------------- VSPBFR
register(Architecture(
    name="vspbfr_e4e_encoder",
    title="e4e style encoder (IR-SE50, VSPBFR stage 1)",
    signature=("input_layer.0.weight", "styles.0.linear.weight", "latlayer1.weight", "latlayer2.weight"),
    model=_M + "e4e:Encoder4Editing",
    config_from_state_dict=_M + "e4e:config_from_state_dict",
    prefixes=("state_dict.encoder.", "encoder.", ""),
    extras={"latent_avg": "latent_avg"},  # stored beside the state dict in e4e checkpoints
))
register(Architecture(
    name="stylegan2_generator",
    title="StyleGAN2 generator (rosinality layout; VSPBFR's facial feature bank)",
    signature=("input.input", "conv1.conv.weight", "to_rgb1.conv.weight", "style.1.weight"),
    model=_M + "stylegan2:Generator",
    config_from_state_dict=_M + "stylegan2:config_from_state_dict",
    prefixes=("g_ema.", "state_dict.decoder.", "decoder.", "g.", ""),
))
register(Architecture(
    name="vspbfr_code_diffuser",
    title="VSPBFR code diffuser (4 TACC blocks)",
    signature=("att_mapper.0.q_matrix.weight", "att_mapper.0.attention_layer.q_matrix.weight"),
    model=_M + "code_diffuser:CodeDiffuser",
    config_from_state_dict=_M + "code_diffuser:config_from_state_dict",
    prefixes=("att_mapper.", ""),
))
register(Architecture(
    name="vspbfr_restoration_net",
    title="VSPBFR SMART restoration auto-encoder",
    signature=("down_from_big.fusion.0.weight", "final_transfer.weight", "conv1.ModulatedConv2ds.0.weight"),
    model=_M + "smart:RestorationNet",
    config_from_state_dict=_M + "smart:config_from_state_dict",
    prefixes=("g_ema.", "g.", ""),
))
register(Architecture(
    name="vspbfr_discriminator",
    title="VSPBFR StyleGAN2 discriminator",
    signature=("encoder_input_convs.0.weight", "final_linear.1.weight"),
    model=_M + "vspbfr_discriminator:Discriminator",
    config_from_state_dict=_M + "vspbfr_discriminator:config_from_state_dict",
    prefixes=("d.", ""),
))
register(Architecture(
    name="e4e_latent_discriminator",
    title="e4e latent-codes discriminator on W (VSPBFR stage 1)",
    signature=("mlp.0.weight", "mlp.0.bias", "mlp.2.weight"),
    model=_M + "latent_discriminator:LatentCodesDiscriminator",
    config_from_state_dict=_M + "latent_discriminator:config_from_state_dict",
    prefixes=("discriminator_state_dict.", ""),
))

# ----------------------------------------------------------------------------------------- PLTrans (ours)
register(Architecture(
    name="pltrans",
    title="PLTrans restoration network (this project's reference implementation)",
    signature=("prior.codebook", "prior.conv.weight", "fuse.0.norm_query.weight", "encoder.conv_in.weight"),
    model=_M + "pltrans:PLTrans",
    config_from_state_dict=_M + "pltrans:config_from_state_dict",
    prefixes=("", "ema.", "model."),
))
register(Architecture(
    name="vqgan_dictionary",
    title="VQGAN HQ dictionary (RestoreFormer layout; PLTrans stage 1)",
    signature=("quant_conv.weight", "quantize.embedding.weight", "post_quant_conv.weight", "encoder.conv_in.weight"),
    model=_M + "vq:VQGAN",
    config_from_state_dict=_M + "vq:config_from_state_dict",
    prefixes=("", "ema.", "model.", "vqvae.", "state_dict.vqvae.", "state_dict."),
))
register(Architecture(
    name="patch_discriminator",
    title="PatchGAN discriminator (taming NLayerDiscriminator layout; PLTrans stages 1 and 3)",
    signature=("main.0.weight", "main.0.bias", "main.2.weight", "main.3.running_mean"),
    model=_M + "discriminators:PatchDiscriminator",
    config_from_state_dict=_M + "discriminators:config_from_state_dict",
    prefixes=("", "loss.discriminator.", "discriminator."),
))

# ----------------------------------------------------------------------------------------- face detection
register(Architecture(
    name="mtcnn",
    title="MTCNN face detector (P-Net, R-Net, O-Net; facenet-pytorch weights, shipped in bfr_core/data)",
    signature=("pnet.conv4_2.weight", "rnet.dense5_2.weight", "onet.dense6_3.weight"),
    model=_M + "mtcnn:MTCNN",
    config_from_state_dict=_M + "mtcnn:config_from_state_dict",
))

# ----------------------------------------------------------------------------------------- built-in compact model
register(Architecture(
    name="compact_restorer",
    title="compact NAFNet-style U-Net restorer (the built-in offline model)",
    signature=("intro.weight", "to_full.weight", "tail.weight", "middle.0.norm1.weight"),
    model=_M + "compact:CompactRestorer",
    config_from_state_dict=_M + "compact:config_from_state_dict",
    prefixes=("", "ema.", "model."),
))
