"""Array adapters: what a torch tensor, numpy array or __cuda_array_interface__ object is (address,
bytes, dtype, shape, device), and zero-copy views of raw memory as numpy arrays or torch tensors.
numpy and torch are imported only when an object of theirs shows up (both are optional)."""

import sys

# epd dtype codes (epd.v1.DType / EPD_DTYPE_*). FP8_E4M3 and UINT8 are fp8 dispatch payloads
# only (recv_x's e4m3 rows, ue8m0 scale bytes): receive views, never a group's dtype.
BF16, FP16, FP32, INT32, INT64, FP8_E4M3, UINT8 = 1, 2, 3, 4, 5, 6, 7
ELEMENT_BYTES = {BF16: 2, FP16: 2, FP32: 4, INT32: 4, INT64: 8, FP8_E4M3: 1, UINT8: 1}
_BY_NAME = {"bf16": BF16, "bfloat16": BF16, "fp16": FP16, "float16": FP16, "half": FP16,
            "fp32": FP32, "float32": FP32, "float": FP32, "int32": INT32, "int64": INT64,
            "fp8_e4m3": FP8_E4M3, "uint8": UINT8}
DTYPE_NAMES = {BF16: "bf16", FP16: "fp16", FP32: "fp32", INT32: "int32", INT64: "int64",
               FP8_E4M3: "fp8_e4m3", UINT8: "uint8"}
# numpy has no bfloat16 nor float8: their data travels in numpy as unsigned bit patterns
# (bf16 as uint16, e4m3 as uint8 bytes).
_NUMPY_TYPESTR = {BF16: "<u2", FP16: "<f2", FP32: "<f4", INT32: "<i4", INT64: "<i8",
                  FP8_E4M3: "|u1", UINT8: "|u1"}
_CAI_TYPESTR = {BF16: "<i2", FP16: "<f2", FP32: "<f4", INT32: "<i4", INT64: "<i8",
                FP8_E4M3: "|u1", UINT8: "|u1"}
# uint8 memory is an fp8 payload: ue8m0 scale bytes, or e4m3 x that Session.dispatch passes
# with x_scales (numpy has no e4m3 type).
_FROM_TYPESTR = {"<u2": BF16, "<f2": FP16, "<f4": FP32, "<i4": INT32, "<i8": INT64, "|u1": UINT8}
_TORCH_NAMES = {"torch.bfloat16": BF16, "torch.float16": FP16, "torch.float32": FP32,
                "torch.int32": INT32, "torch.int64": INT64, "torch.uint8": UINT8,
                "torch.float8_e4m3fn": FP8_E4M3}


def dtype_code(dtype):
    """epd dtype code of a name ("bf16"), an epd code, a numpy dtype or a torch dtype."""
    if isinstance(dtype, int) and dtype in ELEMENT_BYTES:
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _BY_NAME:
        return _BY_NAME[dtype.lower()]
    text = str(dtype)
    if text in _TORCH_NAMES:
        return _TORCH_NAMES[text]
    if text in _BY_NAME:
        return _BY_NAME[text]
    if text == "uint16":
        return BF16
    raise ValueError(f"dtype {dtype!r} is not one of bf16, fp16, fp32, int32, int64")


class Described:
    """Where an array's elements are. `owner` is what keeps the memory alive (torch: the
    storage; numpy: the array at the root of its .base chain) and `owner_key` names it: the
    same for every view of one storage / root array."""

    __slots__ = ("ptr", "nbytes", "dtype", "shape", "on_device", "device", "owner", "owner_key")

    def __init__(self, ptr, nbytes, dtype, shape, on_device, device, owner, owner_key):
        self.ptr, self.nbytes, self.dtype, self.shape = ptr, nbytes, dtype, tuple(shape)
        self.on_device, self.device, self.owner, self.owner_key = (on_device, device, owner,
                                                                   owner_key)


def is_torch(obj):
    return type(obj).__module__.startswith("torch") and hasattr(obj, "data_ptr")


def _contiguous_strides(shape, itemsize):
    strides, step = [], itemsize
    for extent in reversed(shape):
        strides.append(step)
        step *= max(int(extent), 1)
    return tuple(reversed(strides))


def describe(obj, what="tensor"):
    """Described of a torch tensor, numpy array or __cuda_array_interface__ object; ValueError
    naming `what` when it is not a contiguous array of an epd dtype."""
    if is_torch(obj):
        if not obj.is_contiguous():
            raise ValueError(f"{what}: torch tensor of shape {tuple(obj.shape)} is not contiguous")
        code = _TORCH_NAMES.get(str(obj.dtype))
        if code is None:
            raise ValueError(f"{what}: torch dtype {obj.dtype} is not one of bf16, fp16, fp32, "
                             "int32, int64, uint8, float8_e4m3fn")
        storage = obj.untyped_storage() if hasattr(obj, "untyped_storage") else obj.storage()
        device = obj.device.index if obj.is_cuda else -1
        return Described(obj.data_ptr(), obj.numel() * obj.element_size(), code, obj.shape,
                         obj.is_cuda, device, storage, ("torch", device, storage.data_ptr()))
    interface = getattr(obj, "__cuda_array_interface__", None)
    if interface is not None:
        code = _FROM_TYPESTR.get(interface["typestr"])
        if code is None:
            raise ValueError(f"{what}: typestr {interface['typestr']!r} is not an epd dtype")
        shape = tuple(interface["shape"])
        strides = interface.get("strides")
        if strides is not None and tuple(strides) != _contiguous_strides(shape, ELEMENT_BYTES[code]):
            raise ValueError(f"{what}: strides {strides} are not contiguous")
        count = 1
        for extent in shape:
            count *= extent
        return Described(interface["data"][0], count * ELEMENT_BYTES[code], code, shape, True,
                         -1, obj, ("cuda_array_interface", id(obj)))
    interface = getattr(obj, "__array_interface__", None)
    if interface is not None and "numpy" in sys.modules:
        import numpy as np
        array = np.asarray(obj)
        if not array.flags["C_CONTIGUOUS"]:
            raise ValueError(f"{what}: numpy array of shape {array.shape} is not C-contiguous")
        if array.dtype.name == "bfloat16":  # ml_dtypes
            code = BF16
        else:
            code = _FROM_TYPESTR.get(array.dtype.str)
        if code is None:
            raise ValueError(f"{what}: numpy dtype {array.dtype} is not one of uint16 (bf16 bits),"
                             " float16, float32, int32, int64, uint8")
        root = array
        while isinstance(root, np.ndarray) and root.base is not None:
            root = root.base
        return Described(array.__array_interface__["data"][0], array.nbytes, code, array.shape,
                         False, -1, root, ("numpy", id(root)))
    raise TypeError(f"{what}: {type(obj).__name__} is neither a torch tensor, a numpy array nor "
                    "an object with __cuda_array_interface__")


class _HostMemory:
    """numpy's view of raw host memory; holds `owner` so the memory outlives the array."""

    def __init__(self, ptr, dtype, shape, owner):
        self.__array_interface__ = {"shape": tuple(shape), "typestr": _NUMPY_TYPESTR[dtype],
                                    "data": (ptr, False), "version": 3}
        self.owner = owner


class _DeviceMemory:
    """torch's view of raw device memory (__cuda_array_interface__ v3); holds `owner`."""

    def __init__(self, ptr, dtype, shape, owner):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": _CAI_TYPESTR[dtype],
                                         "data": (ptr, False), "version": 3, "strides": None,
                                         "stream": None}
        self.owner = owner


def numpy_view(ptr, dtype, shape, owner):
    """A numpy array over host memory [ptr, ...) (bf16 as uint16 bits)."""
    import numpy as np
    return np.asarray(_HostMemory(ptr, dtype, shape, owner))


def torch_dtype(dtype):
    import torch
    return {BF16: torch.bfloat16, FP16: torch.float16, FP32: torch.float32, INT32: torch.int32,
            INT64: torch.int64, FP8_E4M3: torch.uint8, UINT8: torch.uint8}[dtype]


def torch_host_view(ptr, dtype, shape, owner):
    """A torch CPU tensor over host memory (through numpy, zero-copy)."""
    import numpy as np
    import torch
    array = numpy_view(ptr, dtype, shape, owner)
    if dtype == BF16:  # torch.from_numpy takes no uint16 (before torch 2.3)
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def torch_device_view(ptr, dtype, shape, device, owner):
    """A torch CUDA tensor over device memory of `device` (zero-copy: torch takes the device
    from the pointer and keeps `owner` referenced for the tensor's life)."""
    import torch
    tensor = torch.as_tensor(_DeviceMemory(ptr, dtype, shape, owner))
    if tensor.device != torch.device("cuda", device):
        raise RuntimeError(f"device view landed on {tensor.device}, expected cuda:{device}")
    return tensor.view(torch.bfloat16) if dtype == BF16 else tensor
