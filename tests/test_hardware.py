"""engine.base.hardware: the GPUs a process would see, asked of nvidia-smi when torch is not loaded.

A process without torch (the app, a dry run without a probe) must not load it to plan: it reads
`nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader` instead. Here an `nvidia-smi` on PATH
prints that query's documented output for two GPUs, in a fresh interpreter (no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

SMI_OUTPUT = "NVIDIA H100 80GB HBM3, 9.0\nTesla V100-SXM2-16GB, 7.0\n"


def _ask(tmp_path, code: str, visible: str | None = None) -> dict:
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir(exist_ok=True)
    smi.write_text(f"#!/bin/sh\nprintf '{SMI_OUTPUT}'\n")
    smi.chmod(0o755)
    env = dict(os.environ, PATH=f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    probe = (f"import json, sys\nfrom engine.base import hardware as h\nresult = {code}\n"
             f"print(json.dumps({{'result': result, 'torch': 'torch' in sys.modules}}))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_gpus_names_and_bf16_come_from_nvidia_smi_without_torch(tmp_path):
    got = _ask(tmp_path, "[h.visible_gpus(ask_torch=False), h.device_name('cuda:1', ask_torch=False), "
                         "h.resolve_precision('auto', 'cuda:0', ask_torch=False), "
                         "h.resolve_precision('auto', 'cuda:1', ask_torch=False), "
                         "h.resolve_precision('autocast', 'cpu', ask_torch=False)]")
    gpus, name, first, second, cpu = got["result"]
    assert gpus == [["NVIDIA H100 80GB HBM3", 9.0], ["Tesla V100-SXM2-16GB", 7.0]]
    assert name == "Tesla V100-SXM2-16GB"
    assert (first, second, cpu) == ("bf16", "fp32", "fp32")  # bf16 from compute capability 8.0 on
    assert got["torch"] is False


def test_cuda_visible_devices_is_honoured_as_torch_would(tmp_path):
    assert _ask(tmp_path, "h.visible_gpus(ask_torch=False)", visible="1")["result"] == [["Tesla V100-SXM2-16GB", 7.0]]
    assert _ask(tmp_path, "h.visible_gpus(ask_torch=False)", visible="")["result"] == []
    runner = _ask(tmp_path, "__import__('engine.runner.devices').runner.devices.candidate_devices('auto', "
                            "ask_torch=False)", visible="0,1")
    assert runner["result"] == ["cuda:0", "cuda:1"] and runner["torch"] is False
