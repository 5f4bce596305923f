"""The response reader: what an NDIF server sends back, loaded without running its code.

Results are unpickled by an unpickler that accepts only tensors, numbers, strings, lists,
dicts and nnsight's status enum: nnsight's own loader would unpickle any object, which lets a
hostile host run code here. The types allowed are exactly those a real NDIF response carries
(checked on frames NDIF's own server code produced: ``tests/test_ndif_core.py``).
"""

from __future__ import annotations

import io
from typing import Any

import torch

from reprlab.sessions.errors import RemoteError

_SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "range", "bytearray"}


def _safe_global(module: str, name: str) -> bool:
    """Only what rebuilds tensors and plain containers (and nnsight's status enum)."""
    if module == "torch._utils":
        return name.startswith("_rebuild_")
    if module == "torch._tensor":
        return name == "_rebuild_from_type_v2"
    if module == "torch":
        obj = getattr(torch, name, None)
        return isinstance(obj, torch.dtype) or name.endswith("Storage") or name in (
            "Size", "Tensor", "device")
    if module == "torch.storage":
        return name in ("TypedStorage", "UntypedStorage")
    if module == "collections":
        return name == "OrderedDict"
    if module == "builtins":
        return name in _SAFE_BUILTINS
    return (module, name) == ("nnsight.schema.response", "Status")


def _restricted_pickle() -> Any:
    """A pickle module for ``torch.load`` whose unpickler refuses every other global."""
    import pickle
    import types

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if not _safe_global(module, name):
                raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
            return super().find_class(module, name)

    mod = types.ModuleType("reprlab_restricted_pickle")
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.__dict__["UnpicklingError"] = pickle.UnpicklingError
    return mod


def load_result(content: bytes) -> Any:
    """A result blob as tensors, numbers, strings, lists and dicts; anything else is refused
    (nnsight itself would unpickle any object: a hostile host could run code here)."""
    import pickle

    try:
        return torch.load(io.BytesIO(content), map_location="cpu", weights_only=False,
                          pickle_module=_restricted_pickle())
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise RemoteError("the NDIF result holds objects other than tensors and plain values "
                          f"({first}); refusing to load it (check NDIF_HOST)") from None


def encode_result_frame(job_id: str, result: dict, compress: bool = True) -> bytes:
    """The binary COMPLETED frame a server sends with the saved values inline."""
    from nnsight.schema.response import ResponseModel, Status

    buf = io.BytesIO()
    torch.save(result, buf)
    data = buf.getvalue()
    if compress:
        import zstandard as zstd

        data = zstd.ZstdCompressor(level=6).compress(data)
    return ResponseModel(id=job_id, status=Status.COMPLETED, data=data).pickle()
