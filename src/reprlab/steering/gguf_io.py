"""Export and import steering vectors as llama.cpp control vectors (GGUF).

The format llama.cpp reads (``common_control_vector_load_one``): ``general.architecture =
"controlvector"``, one 1-D F32 tensor per layer named ``direction.<k>``. The tensor
``direction.k`` is added to the output of block ``k`` counted from 0 (llama.cpp's ``l_out`` of
layer ``il = k``) at every position, times the strength given on the command line
(``--control-vector-scaled file:strength``). ``k = 0`` is rejected by the loader, so the output
of block 0 cannot be steered from a file; the usable tensors are ``direction.1`` up to
``direction.<n_layer - 1>``. repeng writes the same names for its block indices and the
metadata ``controlvector.model_hint`` (the HF ``model_type``) and ``controlvector.layer_count``
(the number of direction tensors); llama.cpp does not read them.

Our site ``layers.k`` (output of block ``k``) therefore maps to ``direction.k``. Extra keys under
``reprlab.*`` keep the unit directions, scales and provenance so that a round trip is exact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reprlab.errors import ConfigError, StoreError
from reprlab.io import disk_errors, file_mode
from reprlab.steering.vector import SteeringVector

logger = logging.getLogger(__name__)

ARCH = "controlvector"
_BLOCK = re.compile(r"^layers\.(\d+)$")


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:  # pragma: no cover - optional extra
        raise ConfigError("GGUF export needs the gguf package; run `pip install "
                          "'reprlab[gguf]'`") from None
    return gguf


def export_gguf(vector: SteeringVector, path: str | Path, coeff: float = 1.0,
                unit: str = "unit", model_hint: str | None = None) -> Path:
    """Write ``vector`` as a llama.cpp control vector; returns the path.

    Each block site ``layers.k`` (k >= 1) becomes ``direction.k`` holding
    ``coeff * s * u`` with ``s`` = 1 (``unit``) or the raw mean-difference norm (``raw``).
    Sites llama.cpp cannot steer (``layers.0``, sub-modules, embeddings) are left out with a
    warning; a vector with none of the others is refused.
    """
    gguf = _gguf()
    if unit not in ("unit", "raw"):
        raise ConfigError(f"unknown unit {unit!r}; use unit or raw")
    if not math.isfinite(float(coeff)):
        raise ConfigError(f"--coeff must be a finite number, got {coeff}")
    kept: dict[int, str] = {}
    skipped = []
    for site in vector.sites:
        m = _BLOCK.match(site)
        if m and int(m.group(1)) >= 1:
            kept[int(m.group(1))] = site
        else:
            skipped.append(site)
    if not kept:
        raise ConfigError(f"none of the sites {vector.sites} can be a llama.cpp control vector: "
                          "it steers block outputs layers.1 and deeper; fit at those sites")
    if skipped:
        logger.warning("left out of the GGUF file (llama.cpp cannot steer them): %s",
                       ", ".join(skipped))
    hint = model_hint or str(vector.model.get("model_type") or vector.model.get("name") or "")
    hint = public_name(hint)
    for k in sorted(kept):
        site = kept[k]
        if not torch.isfinite(vector.direction(site)).all() or not math.isfinite(
                float(vector.scales[site])):
            raise StoreError(f"the steering vector has non-finite values at {site}; fit it "
                             "again (its data may hold a constant or empty side)")
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"--gguf {out} is a directory; give a file name such as "
                          f"{out / 'control.gguf'}")
    with disk_errors(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; respect the umask
        os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(kept))
        multipliers = {}
        for k in sorted(kept):
            site = kept[k]
            mult = float(coeff) * (vector.scales[site] if unit == "raw" else 1.0)
            multipliers[site] = mult
            data = (vector.direction(site).double() * mult).float().cpu().numpy()
            writer.add_tensor(f"direction.{k}", np.ascontiguousarray(data, dtype=np.float32))
        writer.add_string("reprlab.method", vector.method)
        writer.add_string("reprlab.position", vector.position)
        # only what a reader needs: no local paths of the data or the model
        writer.add_string("reprlab.source", public_name(vector.source))
        model = {k: (public_name(v) if isinstance(v, str) else v)
                 for k, v in vector.model.items()}
        writer.add_string("reprlab.model", json.dumps(model, default=str))
        writer.add_string("reprlab.scales", json.dumps({kept[k]: vector.scales[kept[k]]
                                                        for k in kept}))
        writer.add_string("reprlab.multipliers", json.dumps(multipliers))
        with disk_errors(out.parent):
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def public_name(text: str) -> str:
    """A local path reduced to its last part (what another machine can use); other text as is."""
    t = str(text or "")
    if os.path.isabs(t) or t.startswith(("~", "./", "../")):
        return Path(t).name
    return t


def _field(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    if f is None:
        return None
    if hasattr(f, "contents"):
        return f.contents()
    return bytes(f.parts[f.data[0]]).decode("utf-8")  # pragma: no cover - old gguf


def import_gguf(path: str | Path) -> SteeringVector:
    """Read a llama.cpp control vector (from reprlab, repeng or llama.cpp) as a SteeringVector.

    ``direction.k`` becomes site ``layers.k``. Files written by reprlab get their unit
    directions, scales and provenance back exactly; other files get unit directions with the
    tensor norm as scale (so ``unit="raw"`` with coefficient 1 reproduces the file).
    """
    gguf = _gguf()
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"GGUF file {p} does not exist")
    try:
        return _import(gguf, p)
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - a crafted or damaged file fails in many ways
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise StoreError(f"{p} is not a readable GGUF control vector ({type(exc).__name__}"
                         f"{': ' + first if first else ''}); export it again") from None


def _json_field(p: Path, meta: dict, key: str, kind: type) -> Any:
    raw = meta.get(key)
    if not raw:
        return kind()
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        raise StoreError(f"{p}: metadata reprlab.{key} is not valid JSON; export the vector "
                         "again") from None
    if not isinstance(value, kind):
        raise StoreError(f"{p}: metadata reprlab.{key} is a {type(value).__name__}, expected "
                         f"a {kind.__name__}; export the vector again")
    return value


def _import(gguf: Any, p: Path) -> SteeringVector:
    reader = gguf.GGUFReader(str(p))
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise StoreError(f"{p} is a GGUF file of architecture {arch!r}, not a control vector "
                         f"({ARCH!r})")
    hint = _field(reader, f"{ARCH}.model_hint") or ""
    meta = {k: _field(reader, f"reprlab.{k}") for k in
            ("method", "position", "source", "model", "scales", "multipliers")}
    mults = _json_field(p, meta, "multipliers", dict)
    saved_scales = _json_field(p, meta, "scales", dict)
    dirs, scales = {}, {}
    for t in reader.tensors:
        m = re.fullmatch(r"direction\.(\d+)", t.name)
        if not m:
            raise StoreError(f"{p} has a tensor {t.name!r} that is not direction.<layer>")
        site = f"layers.{int(m.group(1))}"
        data = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
        if not torch.isfinite(data).all():
            raise StoreError(f"{p}: {t.name} holds non-finite values; export it again")
        norm = float(data.double().norm())
        if norm == 0:
            logger.warning("%s: %s is all zeros; left out", p, t.name)
            continue
        sign = -1.0 if mults.get(site, 1.0) < 0 else 1.0
        dirs[site] = data * sign
        scales[site] = float(saved_scales.get(site, norm))
    if not dirs:
        raise StoreError(f"{p} holds no non-zero direction tensors")
    order = sorted(dirs, key=lambda s: int(s.split(".")[1]))
    model = _json_field(p, meta, "model", dict)
    if hint and not model.get("model_type"):
        model["model_type"] = hint
    return SteeringVector({s: dirs[s] for s in order}, {s: scales[s] for s in order},
                          model=model, method=meta["method"] or "gguf",
                          position=meta["position"] or "last",
                          source=meta["source"] or str(p), info={"gguf_model_hint": hint})
