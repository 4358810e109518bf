import torch


class InterruptProcessingException(Exception):
    pass


OOM_EXCEPTION = torch.cuda.OutOfMemoryError
interrupt_processing = False
#: Modules handed to load_models_gpu, for tests.
LOADED: list = []


def get_torch_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False):
    for m in models:
        m.model.to(m.load_device)
        if m not in LOADED:
            LOADED.append(m)


def free_memory(memory_required, device, keep_loaded=[]):
    pass


def soft_empty_cache(force=False):
    pass


def module_size(module):
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def interrupt_current_processing(value=True):
    global interrupt_processing
    interrupt_processing = value


def processing_interrupted():
    return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()
