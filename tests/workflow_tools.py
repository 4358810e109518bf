"""Example workflows: convert ComfyUI's UI format to the API format, and run them on the test stand-in.

The UI format (what users share, what ``workflows/`` holds) stores widget values by position; turning
it into an API prompt needs each node's input order from ``/object_info``, exactly as the frontend's
"Export (API)" does. ``ui_to_api`` does that with either the real server's ``/object_info`` (the
end-to-end run) or one built from our node schemas (``object_info_from_nodes``, the CI run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

#: The core nodes our example workflows use, as ComfyUI 0.3.64's /object_info describes them.
CORE_NODE_INFO: dict[str, dict] = {
    "LoadImage": {
        "input": {"required": {"image": ["COMBO", {"image_upload": True, "options": []}]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE", "MASK"],
    },
    "SaveImage": {
        "input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
                  "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}},
        "input_order": {"required": ["images", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]},
        "output": [],
    },
    "PreviewImage": {
        "input": {"required": {"images": ["IMAGE", {}]}},
        "input_order": {"required": ["images"]},
        "output": [],
    },
}


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    if isinstance(kind, list):
        return True  # legacy combo: the option list is the type
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return kind in WIDGET_TYPES and not opts.get("forceInput")


def object_info_from_nodes(node_classes: dict[str, type]) -> dict[str, dict]:
    """/object_info entries (V1 layout) for our node classes, from their V3 schemas."""
    info = dict(CORE_NODE_INFO)
    for node_id, cls in node_classes.items():
        schema = cls.define_schema()
        inputs: dict[str, dict] = {}
        for inp in schema.inputs or []:
            opts = {k: getattr(inp, k) for k in ("default", "min", "max", "step", "options", "control_after_generate", "force_input")
                    if getattr(inp, k, None) is not None}
            if "force_input" in opts:
                opts["forceInput"] = opts.pop("force_input")
            inputs.setdefault("optional" if inp.optional else "required", {})[inp.id] = [inp.get_io_type(), opts]
        info[node_id] = {
            "input": inputs,
            "input_order": {k: list(v) for k, v in inputs.items()},
            "output": [o.Parent.io_type for o in schema.outputs or []],
        }
    return info


def ui_to_api(workflow: dict, object_info: dict[str, dict]) -> dict[str, dict]:
    """Turn a UI-format workflow into an API prompt (links become [node_id, slot], widgets get names)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        ntype = node["type"]
        if ntype not in object_info:
            raise KeyError(f"node {node['id']} has type {ntype!r}, which this ComfyUI does not know")
        info = object_info[ntype]
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        pos = 0
        for section in ("required", "optional"):
            for name in info["input_order"].get(section, []):
                spec = info["input"][section][name]
                if _is_widget(spec):
                    value = values[pos] if pos < len(values) else spec[1].get("default") if len(spec) > 1 else None
                    pos += 1
                    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                    if opts.get("control_after_generate"):
                        pos += 1  # the "fixed/increment/randomize" value the frontend stores after a seed
                    if opts.get("image_upload"):
                        pos += 1  # the upload button's value
                    if name not in linked:
                        inputs[name] = value
                if name in linked:
                    link = links[linked[name]]
                    inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": ntype, "inputs": inputs, "_meta": {"title": node.get("title", ntype)}}
    return prompt


def substitute(prompt: dict[str, dict], subs: dict[str, Any]) -> dict[str, dict]:
    """Replace widget values in an API prompt, in place (tests point official weights at tiny files).

    A key ``"node:<class_type>.<input>"`` sets that input of every node of that class (e.g. a few sampler steps
    instead of a workflow's realistic default); any other key replaces that string value wherever it appears.
    """
    for node in prompt.values():
        for name, value in node["inputs"].items():
            forced = f"node:{node['class_type']}.{name}"
            if forced in subs:
                node["inputs"][name] = subs[forced]
            elif isinstance(value, str) and value in subs:
                node["inputs"][name] = subs[value]
    return prompt


def load_workflow(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    for key in ("nodes", "links", "version"):
        if key not in data:
            raise ValueError(f"{path}: not a UI-format workflow (no {key!r})")
    return data


def run_prompt(prompt: dict[str, dict], execute: Callable[[str, dict], tuple]) -> dict[str, tuple]:
    """Execute an API prompt in dependency order; ``execute(class_type, inputs)`` returns the outputs tuple."""
    results: dict[str, tuple] = {}
    pending = dict(prompt)
    while pending:
        ready = [nid for nid, n in pending.items()
                 if all(not isinstance(v, list) or v[0] in results for v in n["inputs"].values())]
        if not ready:
            raise ValueError(f"cycle or dangling link among nodes {sorted(pending)}")
        for nid in ready:
            node = pending.pop(nid)
            args = {k: results[v[0]][v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
            results[nid] = execute(node["class_type"], args)
    return results


def build_ui(nodes: list[dict], object_info: dict[str, dict]) -> dict:
    """A UI-format workflow from a compact spec, laid out left to right by dependency depth.

    Each spec node: ``{"id": int, "type": str, "widgets": {name: value}, "links": {input: (src_id, slot)},
    "title": optional}``. Widget values are placed in the node's input order (as the frontend stores
    them), with ``"fixed"`` after every seed-like widget that has control_after_generate.
    """
    by_id = {n["id"]: n for n in nodes}
    depth: dict[int, int] = {}

    def node_depth(nid: int) -> int:
        if nid not in depth:
            srcs = [src for src, _ in by_id[nid].get("links", {}).values()]
            depth[nid] = 1 + max((node_depth(s) for s in srcs), default=-1)
        return depth[nid]

    links, ui_nodes, rows = [], [], {}
    out_links: dict[tuple[int, int], list[int]] = {}
    for n in nodes:
        for name, (src, slot) in n.get("links", {}).items():
            link_id = len(links) + 1
            src_type = object_info[by_id[src]["type"]]["output"][slot]
            links.append([link_id, src, slot, n["id"], None, src_type])
            out_links.setdefault((src, slot), []).append(link_id)
    for order, n in enumerate(sorted(nodes, key=lambda n: (node_depth(n["id"]), n["id"]))):
        info = object_info[n["type"]]
        col = node_depth(n["id"])
        row = rows[col] = rows.get(col, -1) + 1
        inputs, values = [], []
        for section in ("required", "optional"):
            for name in info["input_order"].get(section, []):
                spec = info["input"][section][name]
                if _is_widget(spec):
                    values.append(n.get("widgets", {}).get(name, spec[1].get("default") if len(spec) > 1 else None))
                    if spec[1].get("control_after_generate"):
                        values.append("fixed")
                    if spec[0] == "COMBO" and spec[1].get("image_upload"):
                        values.append("image")
                elif name in n.get("links", {}) or section == "required":
                    link_id = next((lk[0] for lk in links if lk[3] == n["id"] and (lk[4] is None) and
                                    n["links"].get(name) == (lk[1], lk[2])), None)
                    for lk in links:
                        if lk[0] == link_id:
                            lk[4] = len(inputs)
                    inputs.append({"name": name, "type": spec[0], "link": link_id})
        outputs = [{"name": t, "type": t, "links": out_links.get((n["id"], i))} for i, t in enumerate(info["output"])]
        node = {"id": n["id"], "type": n["type"], "pos": [40 + 380 * col, 80 + 330 * row], "size": [340, 280],
                "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": n["type"]}, "widgets_values": values}
        if n.get("title"):
            node["title"] = n["title"]
        ui_nodes.append(node)
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}
