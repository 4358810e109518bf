"""Run this pack inside a real ComfyUI: import smoke test, then API-format workflows through ``/prompt``.

    python tests/comfyui_e2e.py --comfyui-dir /path/to/ComfyUI [--python /path/to/venv/bin/python] \
        [--workflow workflows/degrade.json ...] [--models-from DIR] [--inputs-from DIR]

Everything ComfyUI writes goes to a temporary ``--base-directory`` (custom_nodes/ with a link to this
repository, models/, input/, output/, user/): the ComfyUI checkout itself is never modified. A workflow
fails the run if ``/prompt`` reports ``node_errors`` or its history status is not success. Exit code 0
means every step passed.

Workflows name their input images and model files; the files are copied from ``--inputs-from`` and
``--models-from`` (a test prepares them: generated images, random-init weights saved as checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.workflow_tools import substitute, ui_to_api  # noqa: E402

PACK_DIRNAME = "ComfyUI-BFR"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, data: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except json.JSONDecodeError:
            return e.code, {}


def prepare_base(base: Path, models_from: Path | None, inputs_from: Path | None) -> None:
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    os.symlink(REPO, base / "custom_nodes" / PACK_DIRNAME, target_is_directory=True)
    for sub in ("input", "output", "temp", "user", "models/bfr"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for src, dst in ((models_from, base / "models" / "bfr"), (inputs_from, base / "input")):
        if src:
            for f in Path(src).iterdir():
                if f.is_file():
                    shutil.copy2(f, dst / f.name)


def import_smoke_test(python: str, comfy: Path, base: Path) -> list[str]:
    """Start ComfyUI once with --quick-test-for-ci; return the problems found in its log."""
    cmd = [python, "main.py", "--cpu", "--quick-test-for-ci", "--disable-api-nodes", "--base-directory", str(base)]
    proc = subprocess.run(cmd, cwd=comfy, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    problems = []
    if proc.returncode != 0:
        problems.append(f"ComfyUI exited with {proc.returncode}")
    for line in log.splitlines():
        if "IMPORT FAILED" in line and PACK_DIRNAME in line:
            problems.append(line.strip())
        if "ComfyUI-BFR:" in line and "disabled" in line:
            print("  note:", line.strip())
    if problems:
        print(log[-6000:])
    return problems


def run_workflows(python: str, comfy: Path, base: Path, workflows: list[Path], timeout: float,
                  substitutions: dict[str, str] | None = None) -> list[str]:
    port = _free_port()
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--disable-api-nodes", "--base-directory", str(base)]
    log_path = base / "comfyui.log"
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(cmd, cwd=comfy, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    problems: list[str] = []
    try:
        deadline = time.time() + 300
        while True:
            try:
                status, info = _http(f"{url}/object_info", timeout=10)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError("ComfyUI did not start:\n" + log_path.read_text()[-4000:])
            time.sleep(1)
        ours = sorted(k for k in info if k.startswith("BFR"))
        print(f"ComfyUI is up on {url}; {len(ours)} BFR nodes registered: {', '.join(ours)}")
        if not ours:
            problems.append("no BFR nodes are registered in /object_info")
        for wf in workflows:
            prompt = json.loads(wf.read_text())
            if "nodes" in prompt and "links" in prompt:
                prompt = ui_to_api(prompt, info)
            substitute(prompt, substitutions or {})
            client_id = str(uuid.uuid4())
            status, reply = _http(f"{url}/prompt", {"prompt": prompt, "client_id": client_id})
            if status != 200 or reply.get("node_errors"):
                problems.append(f"{wf.name}: /prompt answered {status}: {json.dumps(reply)[:2000]}")
                continue
            pid = reply["prompt_id"]
            t0 = time.time()
            while True:
                _, hist = _http(f"{url}/history/{pid}")
                entry = hist.get(pid)
                if entry and entry.get("status", {}).get("completed") is not None:
                    break
                if time.time() - t0 > timeout:
                    problems.append(f"{wf.name}: no result after {timeout:.0f} s")
                    entry = None
                    break
                time.sleep(0.5)
            if entry is None:
                continue
            st = entry["status"]
            if st.get("status_str") != "success":
                msgs = [m for m in st.get("messages", []) if m[0] in ("execution_error", "execution_interrupted")]
                problems.append(f"{wf.name}: status {st.get('status_str')}: {json.dumps(msgs)[:3000]}")
                continue
            outputs = {nid: list(o) for nid, o in entry.get("outputs", {}).items()}
            print(f"  {wf.name}: success in {time.time() - t0:.1f} s; outputs {outputs}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    if problems:
        print(log_path.read_text()[-6000:])
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI source checkout (or $COMFYUI_DIR)")
    p.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON", sys.executable), help="python with ComfyUI's requirements and this pack's dependencies")
    p.add_argument("--workflow", action="append", type=Path, help="API-format workflow JSON (default: tests/workflows_api/*.json)")
    p.add_argument("--models-from", type=Path, help="folder whose files are copied to models/bfr")
    p.add_argument("--inputs-from", type=Path, help="folder whose files are copied to input/")
    p.add_argument("--substitute", type=Path, help="JSON {widget value: replacement} (official weight choices -> test files; "
                                                "'node:<class>.<input>' keys set a widget, see workflow_tools.substitute)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per workflow")
    p.add_argument("--keep", action="store_true", help="keep the temporary base directory")
    args = p.parse_args(argv)
    if not args.comfyui_dir:
        p.error("pass --comfyui-dir or set COMFYUI_DIR")
    comfy = Path(args.comfyui_dir).resolve()
    if not (comfy / "main.py").is_file():
        p.error(f"{comfy} is not a ComfyUI checkout (no main.py)")
    workflows = args.workflow or sorted((REPO / "workflows").glob("*.json"))
    base = Path(tempfile.mkdtemp(prefix="bfr-comfyui-"))
    try:
        prepare_base(base, args.models_from, args.inputs_from)
        print(f"import smoke test ({comfy}, base {base})")
        problems = import_smoke_test(args.python, comfy, base)
        if not problems:
            subs = json.loads(args.substitute.read_text()) if args.substitute else None
            problems = run_workflows(args.python, comfy, base, workflows, args.timeout, subs)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    for prob in problems:
        print("FAIL:", prob)
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
