"""CUDA for the host-side PyTorch runners: the FP32 reference on a GPU, and real FP16 arithmetic
(``--device torch-fp16``: ``.half()`` weights and activations, tensor-core kernels).

The FP32 reference on CUDA turns TF32 off (cuDNN convolutions default to it), so "FP32" means
FP32 there too.
"""

from __future__ import annotations

from edgedeploy.core.errors import EdgeDeployError


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def require_cuda(what: str) -> None:
    """One line, exit 2, where ``what`` needs a CUDA GPU that is not visible."""
    if not cuda_available():
        raise EdgeDeployError(f"{what} needs a CUDA GPU, and PyTorch sees none here (torch.cuda.is_available() is "
                              "False): run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch, or use "
                              "--host-device cpu / --device fp16-emulation")


def resolve_torch_device(spec: str) -> str:
    """``auto`` -> cuda where one is visible, else cpu; ``cpu``/``cuda`` as given (cuda checked)."""
    if spec == "auto":
        return "cuda" if cuda_available() else "cpu"
    if spec == "cuda":
        require_cuda("--host-device cuda")
    return spec


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def strict_fp32() -> None:
    """No TF32 in matmuls or convolutions: the reference stays IEEE FP32 on the GPU."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
