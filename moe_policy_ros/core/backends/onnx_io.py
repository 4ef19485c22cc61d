"""Helpers shared by the backends: graph I/O names and dynamic-shape profiles of an ONNX file.

The ONNX file is parsed without its external data (protobuf only; nothing is unpickled).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["graph_io", "shape_profile"]

Shape = tuple[int, ...]


def graph_io(onnx_path: Path) -> tuple[list[str], list[str], dict[str, list[int | str]]]:
    """(input names, output names, declared dims per input; dynamic dims as names or "?")."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    ins = [vi for vi in model.graph.input if vi.name not in inits]
    dims: dict[str, list[int | str]] = {}
    for vi in ins:
        ds: list[int | str] = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                ds.append(int(d.dim_value))
            else:
                ds.append(d.dim_param or "?")
        dims[vi.name] = ds
    return [vi.name for vi in ins], [vi.name for vi in model.graph.output], dims


def shape_profile(dims: dict[str, list[int | str]], max_k: int,
                  opt_k: int = 2) -> dict[str, tuple[Shape, Shape, Shape]]:
    """min/opt/max shapes per input with dynamic dims: the active-expert count k in 1..max_k.

    Every dynamic dim of the graph contract is k (``expert_idx`` [k], ``expert_weights`` [k],
    ``x_t`` [1, k, R]); static inputs get min = opt = max.
    """
    opt = max(1, min(opt_k, max_k))
    out: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, ds in dims.items():
        lo = tuple(d if isinstance(d, int) else 1 for d in ds)
        mid = tuple(d if isinstance(d, int) else opt for d in ds)
        hi = tuple(d if isinstance(d, int) else max_k for d in ds)
        out[name] = (lo, mid, hi)
    return out
