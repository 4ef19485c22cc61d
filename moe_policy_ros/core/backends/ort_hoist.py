"""Per-chunk hoisting of a flow expert stage: gather the active experts' weights once per chunk.

The flow expert stage ``(context, expert_idx, x_t, t) -> velocity`` runs ``steps`` times per
chunk (more with rtc guidance), and its graph gathers the active experts' weights
(``Gather(W[E, ...], expert_idx)``) on every call: at the 150M scale that copy costs more than
the matmuls. ``context`` and ``expert_idx`` are fixed for the whole chunk, so every node that
depends on them and on no per-step input gives the same result on every call.

:func:`split_invariant` is loop-invariant code motion on the ONNX graph, done at load time on
the verified file (the bundle is not changed): nodes are classed *static* (no graph input
reaches them: constants), *chunk* (reached by a per-chunk input, not by a per-step one) or
*step*. The *prepare* graph computes the chunk nodes and outputs the boundary tensors the step
nodes read; the *step* graph takes those as inputs. Besides the gathers this also hoists
``context @ W_in[idx]``, so the context block of the first layer is neither copied nor read
per step. :class:`HoistedStage` runs prepare when ``(context, expert_idx)`` change and step
on every call: a drop-in :class:`~moe_policy_ros.core.backends.base.Stage` with the same
names and results (same ops, same order; tested to match the plain stage). ONNX Runtime on
CPU reads numpy inputs in place, so the boundary tensors are not copied per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HoistedStage", "split_invariant"]


def _tensor_type(model: Any, name: str) -> Any:
    for vi in list(model.graph.value_info) + list(model.graph.output):
        if vi.name == name:
            return vi.type
    raise ValueError(f"no type inferred for {name!r}: cannot hoist it")


def split_invariant(model: Any, per_chunk: set[str]) -> tuple[Any, Any, list[str]]:
    """(prepare, step, boundary names) for an ONNX ``model`` and its per-chunk inputs."""
    import onnx
    from onnx import helper, shape_inference

    g = model.graph
    inputs = [i.name for i in g.input]
    unknown = sorted(per_chunk - set(inputs))
    if unknown:
        raise ValueError(f"per-chunk inputs {unknown} are not graph inputs {inputs}")
    inferred = shape_inference.infer_shapes(model)
    inits = {t.name for t in g.initializer}
    kind: dict[str, str] = {n: "static" for n in inits}
    kind.update({n: ("chunk" if n in per_chunk else "step") for n in inputs})
    kind[""] = "static"  # optional input left empty
    node_kind: list[str] = []
    for node in g.node:
        if any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute):
            k = "step"  # subgraphs: keep them where they are
        else:
            ks = {kind[i] for i in node.input}
            k = "step" if "step" in ks else "chunk" if "chunk" in ks else "static"
        node_kind.append(k)
        for o in node.output:
            kind[o] = k
    outputs = [o.name for o in g.output]
    consumed_by_step = {
        i for node, k in zip(g.node, node_kind, strict=True) if k == "step" for i in node.input
    }
    boundary = sorted(
        n for n, k in kind.items() if k == "chunk" and (n in consumed_by_step or n in outputs)
    )
    if any(kind[o] != "step" for o in outputs):
        raise ValueError(f"outputs {outputs} do not all depend on a per-step input")

    def needed(targets: list[str], allowed: set[str]) -> list[Any]:
        want, keep = set(targets), []
        for node, k in reversed(list(zip(g.node, node_kind, strict=True))):
            if k in allowed and want & set(node.output):
                keep.append(node)
                want |= set(node.input)
        return list(reversed(keep))

    def build(name: str, nodes: list[Any], ins: list[Any], outs: list[Any]) -> Any:
        used = {i for n in nodes for i in n.input}
        graph = helper.make_graph(
            nodes, name, ins, outs, [t for t in g.initializer if t.name in used]
        )
        m = helper.make_model(graph, opset_imports=model.opset_import)
        m.ir_version = model.ir_version
        return m

    def vi(name: str) -> Any:
        return helper.make_value_info(name, _tensor_type(inferred, name))

    by_name = {i.name: i for i in g.input}
    prep_nodes = needed(boundary, {"static", "chunk"})
    prep_used = {i for n in prep_nodes for i in n.input}
    prepare = build(
        "prepare",
        prep_nodes,
        [by_name[n] for n in inputs if n in per_chunk and n in prep_used],
        [vi(n) for n in boundary],
    )
    step_nodes = needed(outputs, {"static", "step"})
    step = build(
        "step",
        step_nodes,
        [by_name[n] for n in inputs if n not in per_chunk] + [vi(n) for n in boundary],
        list(g.output),
    )
    return prepare, step, boundary


class HoistedStage:
    """Prepare once per ``(context, expert_idx)``, step per call; see the module doc."""

    def __init__(
        self,
        onnx_path: Path,
        session_options: Any,
        per_chunk: set[str],
        expected_sha256: str = "",
    ) -> None:
        import hashlib

        import onnx
        import onnxruntime as ort

        raw = Path(onnx_path).read_bytes()
        got = hashlib.sha256(raw).hexdigest()
        if expected_sha256 and got != expected_sha256.lower():
            raise ValueError(
                f"{onnx_path}: SHA-256 {got} differs from the manifest's {expected_sha256} "
                "(the file changed after the bundle was verified)"
            )
        model = onnx.load_from_string(raw)
        self.input_names: list[str] = [i.name for i in model.graph.input]
        self.output_names: list[str] = [o.name for o in model.graph.output]
        prepare, step, self.boundary = split_invariant(model, per_chunk)
        cpu = ["CPUExecutionProvider"]
        self._prepare = ort.InferenceSession(
            prepare.SerializeToString(), sess_options=session_options, providers=cpu
        )
        self._step = ort.InferenceSession(
            step.SerializeToString(), sess_options=session_options, providers=cpu
        )
        self._prep_in = [i.name for i in self._prepare.get_inputs()]
        self._step_in = [i.name for i in self._step.get_inputs() if i.name not in self.boundary]
        self._key: list[np.ndarray] | None = None
        self._bound: dict[str, np.ndarray] = {}
        self.prepare_runs = 0
        self.step_runs = 0
        inits = {t.name: t for t in step.graph.initializer}
        self.step_initializer_bytes = int(
            sum(np.prod(t.dims, dtype=np.int64) * 4 for t in inits.values())
        )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"stage inputs missing: {missing} (expected {self.input_names})")
        key = [np.asarray(feeds[n]) for n in self._prep_in]
        if self._key is None or not all(
            a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
            for a, b in zip(key, self._key, strict=True)
        ):
            outs = self._prepare.run(self.boundary, {n: feeds[n] for n in self._prep_in})
            self._bound = dict(zip(self.boundary, outs, strict=True))
            self._key = [a.copy() for a in key]
            self.prepare_runs += 1
        step_feeds = {n: feeds[n] for n in self._step_in}
        step_feeds.update(self._bound)
        self.step_runs += 1
        return dict(zip(self.output_names, self._step.run(self.output_names, step_feeds),
                        strict=True))  # fmt: skip

    def bound_bytes(self) -> int:
        """Bytes of the boundary tensors the step graph reads per call (current chunk)."""
        return int(sum(a.nbytes for a in self._bound.values()))
