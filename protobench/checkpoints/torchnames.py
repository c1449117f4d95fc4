"""The names a torch checkpoint's pickle may use, and what each stands for when protobench reads it.

torch.save writes a handful of global names besides the model's own classes: tensor and
parameter rebuild functions, storage classes, dtypes, OrderedDict and set for module state.
These are all a pickle may call here (`CALLABLES`), each through a wrapper that checks its
arguments; storage classes and `torch.Tensor` become inert markers, never callables (calling
`torch.FloatStorage(n)` would allocate n floats). torch's own weights-only allowlist is
wider (it allows `builtins.bytearray`, which allocates whatever size a file asks for).
"""

from __future__ import annotations

import collections
import pickle
from typing import Any

import torch

from protobench.checkpoints.torchfile import Refused, StorageType, tensor_view


def _sequence(value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):  # never a tensor: iterating one makes an object per element
        raise Refused(f"passes a {type(value).__name__} where torch writes a list")
    return tuple(value)


def _parameter(data: Any, *_: Any) -> torch.Tensor:
    """_rebuild_parameter(data, requires_grad, hooks[, state]): the data is all protobench keeps."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter record holds no tensor")
    return data


def _tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    return tensor_view(storage, offset, size, stride)  # requires_grad, hooks and metadata are dropped


def _from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> torch.Tensor:
    known = any(func is f for f in (_tensor_v2, _parameter)) and any(new_type is t for t in (_TENSOR, _parameter))
    if not known or not isinstance(args, tuple):
        raise Refused("rebuilds a tensor subclass or calls a function no supported model uses")
    return func(*args)  # a plain tensor: its Python attributes (`state`) are dropped


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes; no other codec is looked up."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused("calls _codecs.encode with something other than latin1 text")
    return text.encode("latin-1")


_TENSOR = object()  # `torch.Tensor` is only ever an argument of _rebuild_from_type_v2
_STORAGE_DTYPES = {"Double": torch.float64, "Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16,
                   "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8,
                   "Byte": torch.uint8, "Bool": torch.bool, "ComplexFloat": torch.complex64,
                   "ComplexDouble": torch.complex128}
CALLABLES = {  # the only functions a pickle may call; each checks its arguments
    "collections.OrderedDict": lambda items=(): collections.OrderedDict(_sequence(items)),
    "builtins.set": lambda items=(): set(_sequence(items)),
    "builtins.frozenset": lambda items=(): frozenset(_sequence(items)),
    "torch.Size": lambda items=(): torch.Size(_sequence(items)),
    "torch._utils._rebuild_tensor_v2": _tensor_v2,
    "torch._utils._rebuild_tensor": _tensor_v2,
    "torch._utils._rebuild_parameter": _parameter,
    "torch._utils._rebuild_parameter_with_state": _parameter,
    "torch.nn.parameter.Parameter": _parameter,
    "torch._tensor._rebuild_from_type_v2": _from_type,
    "_codecs.encode": _latin1,
}
TORCH_NAMES: dict[str, Any] = {  # every name a torch checkpoint may use, and what it stands for here
    **CALLABLES,
    "torch.Tensor": _TENSOR,
    "torch.storage.UntypedStorage": StorageType(torch.uint8),
    **{f"torch{cuda}.{name}Storage": StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()
       for cuda in ("", ".cuda")},  # GPU-saved files name the CUDA classes; all storages load on the CPU
    **{f"torch.{str(dtype).partition('.')[2]}": dtype for dtype in _STORAGE_DTYPES.values()},
}
CALLABLE_IDS = {id(f) for f in CALLABLES.values()}
