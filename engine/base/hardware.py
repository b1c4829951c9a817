"""What devices this machine has, asked of torch when it is loaded, or without it.

A process that has not imported torch (the app, a dry run without a probe) learns the visible GPUs,
their names and compute capabilities from `nvidia-smi` instead of loading torch for it (seconds);
`CUDA_VISIBLE_DEVICES` is honoured as torch would (a list of indices; an empty value hides them
all). A worker asks torch (`ask_torch=True`), which is what it will run on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PRECISIONS = ("auto", "bf16", "autocast", "fp32")


def visible_gpus(ask_torch: bool = True) -> list[tuple[str, float]]:
    """(name, compute capability) of each GPU a CUDA process here would see, in its index order."""
    if ask_torch or "torch" in sys.modules:
        import torch

        if not torch.cuda.is_available():
            return []
        return [(torch.cuda.get_device_name(i), float("{}.{}".format(*torch.cuda.get_device_capability(i))))
                for i in range(torch.cuda.device_count())]
    return _nvidia_smi_gpus()


def _nvidia_smi_gpus() -> list[tuple[str, float]]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, cap = line.rpartition(",")
        try:
            gpus.append((name.strip(), float(cap)))
        except ValueError:
            gpus.append((line.strip(), 0.0))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        indices = [v.strip() for v in visible.split(",") if v.strip()]
        if all(i.isdigit() for i in indices):
            return [gpus[int(i)] for i in indices if int(i) < len(gpus)]
        return gpus[:len(indices)]  # UUIDs: the count is right, the order may not be
    return gpus


def device_name(device: str, ask_torch: bool = True) -> str:
    """The device's model ("NVIDIA H100 80GB HBM3"), or the CPU with its core count."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        gpus = visible_gpus(ask_torch)
        return gpus[index][0] if index < len(gpus) else device
    return f"cpu ({os.cpu_count()} cores)"


def resolve_precision(precision: str, device: str, ask_torch: bool = True) -> str:
    """The precision a backbone runs in: `auto` is bf16 on a GPU that has it (compute capability 8.0 and
    up), else fp32; `autocast` to bf16 is a GPU feature here, so the CPU keeps exact float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cuda_bf16 = False
    if device.startswith("cuda"):
        if ask_torch or "torch" in sys.modules:
            import torch

            cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        else:
            index = int(device.partition(":")[2] or 0)
            gpus = visible_gpus(False)
            cuda_bf16 = index < len(gpus) and gpus[index][1] >= 8.0
    if precision == "auto":
        return "bf16" if cuda_bf16 else "fp32"
    if precision == "autocast" and not cuda_bf16:
        return "fp32"
    return precision
