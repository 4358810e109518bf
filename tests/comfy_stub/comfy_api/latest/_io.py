"""Stand-in for comfy_api.latest._io: the same constructor signatures, with the checks ComfyUI does."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


class Input:
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy

    @property
    def io_type(self):
        return self.Parent.io_type

    def get_io_type(self):
        """The type string /object_info shows for this input (a union ``"A,B"`` for MultiType)."""
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 socketless=None, widget_type=None, force_input=None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.force_input = default, force_input


class Output:
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list

    @property
    def io_type(self):
        return self.Parent.io_type


def comfytype(io_type: str):
    def wrap(cls):
        cls.io_type = io_type
        for name in ("Input", "Output"):
            inner = getattr(cls, name, None)
            if inner is not None:
                sub = type(name, (inner,), {"Parent": cls})
                setattr(cls, name, sub)
        return cls
    return wrap


class ComfyTypeIO:
    Input = Input
    Output = Output


@comfytype("BOOLEAN")
class Boolean(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                     label_on=None, label_off=None, socketless=None, force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)


@comfytype("INT")
class Int(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None, max=None,
                     step=None, control_after_generate=None, display_mode=None, socketless=None, force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate


@comfytype("FLOAT")
class Float(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None, max=None,
                     step=None, round=None, display_mode=None, socketless=None, force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step, self.round = min, max, step, round


@comfytype("STRING")
class String(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False, placeholder=None,
                     default=None, dynamic_prompts=None, socketless=None, force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.multiline = multiline


@comfytype("COMBO")
class Combo(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                     control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [v.value for v in options]
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            self.options = options


@comfytype("IMAGE")
class Image(ComfyTypeIO):
    Type = Any


@comfytype("MASK")
class Mask(ComfyTypeIO):
    Type = Any


@comfytype("LATENT")
class Latent(ComfyTypeIO):
    Type = Any


@comfytype("*")
class AnyType(ComfyTypeIO):
    Type = Any


@comfytype("COMFY_MULTITYPED_V3")
class MultiType:
    Type = Any

    class Input(Input):
        """An input that accepts several types; ComfyUI validates links against the comma-joined union."""

        def __init__(self, id, types, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None):
            self.input_override = None
            if isinstance(id, Input):
                self.input_override = id
                optional = id.optional if id.optional is True else optional
                tooltip = id.tooltip if id.tooltip is not None else tooltip
                display_name = id.display_name if id.display_name is not None else display_name
                id = id.id
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
            self._io_types = types

        def get_io_type(self):
            types = [t.io_type for t in self._io_types]
            if self.input_override is not None:
                types.insert(0, self.input_override.get_io_type())
            return ",".join(dict.fromkeys(types))


def Custom(io_type: str):
    @comfytype(io_type)
    class CustomType(ComfyTypeIO):
        pass
    return CustomType


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        ins = [i.id for i in self.inputs or []]
        outs = [o.id for o in self.outputs or [] if o.id is not None]
        issues = []
        if len(set(ins)) != len(ins):
            issues.append(f"Input ids must be unique, but {[k for k, c in Counter(ins).items() if c > 1]} are not.")
        if len(set(outs)) != len(outs):
            issues.append(f"Output ids must be unique, but {[k for k, c in Counter(outs).items() if c > 1]} are not.")
        if set(ins) & set(outs):
            issues.append(f"Ids must be unique between inputs and outputs, but {set(ins) & set(outs)} are not.")
        if issues:
            raise ValueError("\n".join(issues))


class _HiddenHolder:
    def __init__(self, unique_id=None, prompt=None, extra_pnginfo=None, dynprompt=None):
        self.unique_id, self.prompt, self.extra_pnginfo, self.dynprompt = unique_id, prompt, extra_pnginfo, dynprompt


class ComfyNode:
    hidden = _HiddenHolder()

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs):
        return True

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return None


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand=None, block_execution=None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None
