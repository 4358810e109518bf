import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
base_path = os.environ.get("BFR_TEST_COMFY_BASE", os.path.join(os.path.dirname(__file__), "_base"))
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict = {
    "checkpoints": ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions),
    "upscale_models": ([os.path.join(models_dir, "upscale_models")], supported_pt_extensions),
}


def set_base(path):
    """Test helper: point every folder at a fresh base directory."""
    global base_path, models_dir
    base_path, models_dir = path, os.path.join(path, "models")
    folder_names_and_paths.clear()
    folder_names_and_paths["checkpoints"] = ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions)


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    paths, exts = folder_names_and_paths.setdefault(folder_name, ([], set()))
    if full_folder_path not in paths:
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def get_folder_paths(folder_name):
    return list(folder_names_and_paths[folder_name][0])


def get_filename_list(folder_name):
    paths, exts = folder_names_and_paths[folder_name]
    out = []
    for d in paths:
        if not os.path.isdir(d):
            continue
        for root, _, files in os.walk(d):
            for f in files:
                if not exts or os.path.splitext(f)[1].lower() in exts:
                    out.append(os.path.relpath(os.path.join(root, f), d).replace(os.sep, "/"))
    return sorted(set(out))


def get_full_path(folder_name, filename):
    if folder_name not in folder_names_and_paths:
        return None
    for d in folder_names_and_paths[folder_name][0]:
        p = os.path.join(d, filename)
        if os.path.isfile(p):
            return p
    return None


def get_full_path_or_raise(folder_name, filename):
    p = get_full_path(folder_name, filename)
    if p is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return p


def get_input_directory():
    return os.path.join(base_path, "input")


def get_output_directory():
    return os.path.join(base_path, "output")


def get_temp_directory():
    return os.path.join(base_path, "temp")
