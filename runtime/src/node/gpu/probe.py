"""Crucible's GPU probe: a matmul on each visible GPU, checked against the CPU."""
import math

import torch


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(512, 512, generator=generator)
    b = torch.randn(512, 512, generator=generator)
    expected = a @ b
    scale = expected.abs().max().item()
    available = torch.cuda.is_available()
    devices = []
    for index in range(torch.cuda.device_count() if available else 0):
        device = torch.device("cuda", index)
        got = (a.to(device) @ b.to(device)).cpu()
        error = (got - expected).abs().max().item() / scale
        devices.append({
            "name": torch.cuda.get_device_name(index),
            "max_relative_error": error if math.isfinite(error) else None,
        })
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": available,
        "devices": devices,
    }
