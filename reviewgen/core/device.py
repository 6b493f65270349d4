"""Device choice for every stage (training, sampling, scoring), and the precision of inference on it."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), through oneDNN. Without
    it bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and torch.backends.mkldnn.is_available()
    except (AttributeError, RuntimeError):
        return False


def inference_dtype(device: torch.device) -> torch.dtype:
    """The dtype forwards that only read the models (sampling, scoring) compute in on `device`: bf16 on CUDA
    and on a CPU with native bf16 matrix units, where it is much faster and the scorer's statistics barely
    move; fp32 elsewhere. Buffers that must match it (a KV cache, weights cast ahead of many products) use
    it too."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


def training_dtype(device: torch.device) -> torch.dtype:
    """The dtype training computes in on `device`: bf16 on CUDA, fp32 on CPU (bf16 training on CPU is not
    validated)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """The one autocast region of the package: matmuls in `dtype` on `device` (`inference_dtype` or
    `training_dtype`); float32 means autocast off, also inside an enclosing region."""
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def cast_matmul_weights(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store the weights and biases of `module`'s nn.Linear layers in `dtype`, in place, for a module that
    only ever runs under `autocast` to that dtype. Autocast then takes them as they are, with the
    same rounding it would apply; otherwise it casts every weight at every call, since it keeps its casts
    only within one autocast region and never in inference mode (for a small model, those casts are a
    large share of a one-review scoring call). Returns `module`."""
    if dtype == torch.float32:
        return module
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.weight.data = m.weight.data.to(dtype)
            if m.bias is not None:
                m.bias.data = m.bias.data.to(dtype)
    return module
