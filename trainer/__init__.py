"""The training side of ComfyUI-BFR: one Accelerate trainer for every stage of VSPBFR, PGDiff and PLTrans.

``python trainer/train.py --config trainer/configs/<stage>.yaml [key=value ...]`` (or the same through
``accelerate launch``). A stage is one small step function plus a config; see :mod:`trainer.stages`.
Nothing here is imported by ``bfr_core`` or the ComfyUI nodes.
"""
