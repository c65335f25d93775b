"""GPU memory per device for ``/system_status``, when ``nvidia-ml-py`` (``pynvml``, the
extra ``[gpu]``) is importable and finds a driver; ``None`` otherwise (nothing is shown)."""

GB = 1024 ** 3


def gpu_memory():
    """``[{"device": "cuda:<i>", "name", "mem_used", "mem_total"}]`` in GB (2 decimals), or None."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no GPU: nothing to show
        return None
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            found.append({'device': 'cuda:{}'.format(index),
                          'name': name.decode('utf-8', 'replace') if isinstance(name, bytes) else str(name),
                          'mem_used': round(memory.used / GB, 2), 'mem_total': round(memory.total / GB, 2)})
        return found
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
