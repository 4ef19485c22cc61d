"""Bundle loading: manifest, file hashes, path containment and graph I/O contracts.

:func:`load_bundle` is the only way the runtime opens a bundle. It refuses anything that does
not match ``policy.yaml`` before a single graph is handed to a backend:

* the manifest must validate (:mod:`moe_policy_ros.core.manifest`), and when the deployment
  pins it, the SHA-256 of the ``policy.yaml`` bytes must equal the pin (a swapped bundle is
  refused even if it is internally consistent);
* every stage file must lie inside the bundle directory (no absolute paths, no ``..``, no
  symlink leading out) and hash to the manifest's SHA-256; a bundle ships ONNX + manifest
  only (the torch checkpoint it was exported from stays outside, known by its hash);
* every ONNX file must parse, pass the ONNX checker, keep its external data (if any) inside the
  bundle directory, and expose exactly the inputs and outputs of the graph contract with the
  manifest's dtypes and static dims (cameras, proprio dim, E, context dim, H, A, R, latent dim).
  The active-expert dimension ``k`` of the expert stage must be dynamic.

Nothing is ever unpickled here; ONNX files are protobuf and are parsed without their external
data. Every failure is a :class:`BundleError` naming the file and what differs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from moe_policy_ros.core.io import sha256_file
from moe_policy_ros.core.manifest import (
    MANIFEST_NAME,
    BundleError,
    Manifest,
    parse_manifest,
)

__all__ = [
    "BundleError",
    "LoadedBundle",
    "TensorSpec",
    "graph_contract",
    "load_bundle",
]


# A dim is an int (static) or a name (dynamic, e.g. the number of active experts "k").
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output promised by the contract."""

    name: str
    dtype: str  # "float32" | "int64"
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


@dataclass(frozen=True)
class StageContract:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle: its manifest, resolved file paths and hashes."""

    path: Path
    manifest: Manifest
    manifest_sha256: str
    stage_paths: dict[str, Path]
    stage_sizes: dict[str, int]
    external_data: dict[str, tuple[Path, ...]] = field(default_factory=dict)

    @property
    def num_experts(self) -> int:
        return self.manifest.experts.count

    def stage_path(self, name: str) -> Path:
        try:
            return self.stage_paths[name]
        except KeyError:
            raise BundleError(
                f"{self.path}: no stage {name!r} (stages: {sorted(self.stage_paths)})"
            ) from None


def graph_contract(manifest: Manifest) -> dict[str, StageContract]:
    """The inputs and outputs each stage graph must expose, derived from the manifest."""
    m = manifest
    f32, i64 = "float32", "int64"
    e = m.experts.count
    d = m.context_dim
    h, a = m.action.chunk_length, m.action.dim
    enc_in = [TensorSpec(f"image_{c.name}", f32, (1, 3, c.height, c.width)) for c in
              m.observation.cameras]
    enc_in.append(TensorSpec("proprio", f32, (1, len(m.observation.proprio.joints))))
    enc_out = [TensorSpec("context", f32, (1, d)), TensorSpec("gate_logits", f32, (1, e))]
    if m.family == "adamoe":
        enc_out.append(TensorSpec("adapter_weights", f32, (1, e)))
    elif m.family == "dibm":
        enc_out.append(TensorSpec("energies", f32, (1, e)))
    elif m.family == "lar":
        enc_out.append(TensorSpec("latent", f32, (1, m.latent_dim)))
    if m.is_flow:
        assert m.sampler is not None
        r = m.sampler.rank
        enc_out.append(TensorSpec("basis", f32, (1, e, h * a, r)))
        exp_in: tuple[TensorSpec, ...] = (
            TensorSpec("context", f32, (1, d)),
            TensorSpec("expert_idx", i64, ("k",)),
            TensorSpec("x_t", f32, (1, "k", r)),
            TensorSpec("t", f32, (1,)),
        )
        exp_out: tuple[TensorSpec, ...] = (TensorSpec("velocity", f32, (1, "k", r)),)
    else:
        exp_in = (
            TensorSpec("context", f32, (1, d)),
            TensorSpec("expert_idx", i64, ("k",)),
            TensorSpec("expert_weights", f32, ("k",)),
        )
        exp_out = (TensorSpec("actions", f32, (1, h, a)),)
    return {
        "encoder": StageContract(tuple(enc_in), tuple(enc_out)),
        "experts": StageContract(exp_in, exp_out),
    }


# --------------------------------------------------------------------------- paths


def _contained(bundle_dir: Path, rel: str, what: str, source: str,
               base: Path | None = None) -> Path:
    """Resolve ``rel`` (relative to ``base``, default the bundle directory) inside
    ``bundle_dir``; refuse absolute paths, ``..`` components and symlinks leading out."""
    if not rel or rel.strip() != rel:
        raise BundleError(f"{source}: {what}: invalid file name {rel!r}")
    if os.path.isabs(rel) or PurePosixPath(rel).is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        raise BundleError(f"{source}: {what}: absolute path {rel!r} is not allowed "
                          "(files must lie inside the bundle directory)")
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if ".." in parts:
        raise BundleError(f"{source}: {what}: path {rel!r} escapes the bundle directory ('..')")
    root = bundle_dir.resolve()
    target = ((base or bundle_dir) / rel).resolve()
    if target != root and root not in target.parents:
        raise BundleError(
            f"{source}: {what}: {rel!r} resolves to {target}, outside the bundle directory "
            f"{root} (symlink?)"
        )
    return target


def _check_external_hashes(
    bundle_dir: Path,
    stage: str,
    listed: dict[str, str],
    used: tuple[Path, ...],
    source: str,
) -> None:
    """Every external-data file a stage uses must be listed with its SHA-256 and match it,
    so that weights outside the .onnx file are as tamper-evident as the graph itself."""
    root = bundle_dir.resolve()
    for path in used:
        rel = path.relative_to(root).as_posix()
        want = listed.get(rel)
        if want is None:
            raise BundleError(
                f"{path}: external data of stage {stage!r} has no SHA-256 in {source} "
                f"(stages.{stage}.external_data lists {sorted(listed)}); refusing unverifiable "
                "weights"
            )
        _check_file(bundle_dir, rel, want, f"external data of stage {stage!r}", source)


def _check_file(bundle_dir: Path, rel: str, expected_sha: str, what: str, source: str) -> Path:
    path = _contained(bundle_dir, rel, what, source)
    if not path.is_file():
        raise BundleError(f"{bundle_dir / rel}: {what} file is missing")
    got = sha256_file(path)
    if got != expected_sha:
        raise BundleError(
            f"{bundle_dir / rel}: {what} SHA-256 mismatch (file changed or tampered): "
            f"expected {expected_sha}, got {got}"
        )
    return path


# --------------------------------------------------------------------------- ONNX


_ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 10: "float16", 11: "float64", 9: "bool"}


def _iter_tensors(graph: object) -> Iterator[object]:
    """Every TensorProto of a graph, including subgraphs and node attributes."""
    import onnx

    g = graph
    assert isinstance(g, onnx.GraphProto)
    yield from g.initializer
    for node in g.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from _iter_tensors(sub)


def _external_data(model: object, path: Path, bundle_dir: Path) -> tuple[Path, ...]:
    import onnx

    assert isinstance(model, onnx.ModelProto)
    files: list[Path] = []
    for t in _iter_tensors(model.graph):
        assert isinstance(t, onnx.TensorProto)
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        what = f"external data of tensor {t.name!r}"
        # Locations are relative to the ONNX file's directory (itself inside the bundle).
        target = _contained(bundle_dir, loc, what, str(path), base=path.parent)
        if not target.is_file():
            raise BundleError(f"{path}: {what}: file {loc!r} is missing")
        size = target.stat().st_size
        offset = int(info.get("offset", "0") or 0)
        length = int(info.get("length", "0") or 0)
        if offset < 0 or length < 0 or offset + length > size:
            raise BundleError(
                f"{path}: {what}: range offset={offset} length={length} exceeds {loc!r} "
                f"({size} bytes; truncated?)"
            )
        if target not in files:
            files.append(target)
    return tuple(files)


def _fmt_dims(dims: list[Dim | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _value_info(vi: object) -> tuple[str, list[Dim | None]]:
    import onnx

    assert isinstance(vi, onnx.ValueInfoProto)
    tt = vi.type.tensor_type
    dtype = _ONNX_DTYPES.get(tt.elem_type, onnx.TensorProto.DataType.Name(tt.elem_type).lower())
    dims: list[Dim | None] = []
    if tt.HasField("shape"):
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
    return dtype, dims


def _check_io(path: Path, kind: str, got: dict[str, object], want: tuple[TensorSpec, ...],
              ) -> list[str]:
    errs: list[str] = []
    want_names = [t.name for t in want]
    missing = [n for n in want_names if n not in got]
    extra = [n for n in got if n not in want_names]
    if missing or extra:
        errs.append(
            f"{kind} names: expected {want_names}, got {list(got)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    for spec in want:
        if spec.name not in got:
            continue
        dtype, dims = _value_info(got[spec.name])
        if dtype != spec.dtype:
            errs.append(f"{kind} {spec.name!r} dtype: expected {spec.dtype}, got {dtype}")
        if len(dims) != len(spec.shape):
            errs.append(
                f"{kind} {spec.name!r} shape: expected {spec.describe()}, got rank "
                f"{len(dims)} {_fmt_dims(dims)}"
            )
            continue
        for i, (w, g) in enumerate(zip(spec.shape, dims, strict=True)):
            if isinstance(w, int) and g != w:
                errs.append(
                    f"{kind} {spec.name!r} dim {i}: expected {w} (static), got "
                    f"{'dynamic ' + repr(g) if not isinstance(g, int) else g} "
                    f"(contract {spec.describe()}, graph {_fmt_dims(dims)})"
                )
            elif isinstance(w, str) and isinstance(g, int):
                errs.append(
                    f"{kind} {spec.name!r} dim {i}: expected dynamic {w!r} (the number of "
                    f"active experts), got static {g} (graph {_fmt_dims(dims)})"
                )
    return errs


def _check_onnx(path: Path, stage: str, contract: StageContract, bundle_dir: Path,
                ) -> tuple[Path, ...]:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise BundleError(f"{path}: not a valid ONNX file (corrupt or truncated): {err}") from None
    if not model.graph.node and not model.graph.output:
        raise BundleError(f"{path}: not a valid ONNX file (empty graph; corrupt or truncated)")
    externals = _external_data(model, path, bundle_dir)
    try:
        onnx.checker.check_model(str(path))  # path form: external data beside the file
    except (onnx.checker.ValidationError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BundleError(f"{path}: ONNX checker rejected the {stage} graph: {first}") from None
    inits = {t.name for t in model.graph.initializer}
    ins = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    outs = {vi.name: vi for vi in model.graph.output}
    errs = _check_io(path, "input", ins, contract.inputs)
    errs += _check_io(path, "output", outs, contract.outputs)
    if errs:
        raise BundleError(
            f"{path}: {stage} graph does not match the manifest contract:\n  " + "\n  ".join(errs)
        )
    return externals


# --------------------------------------------------------------------------- entry point


def load_bundle(path: str | Path, *, expected_sha256: str = "") -> LoadedBundle:
    """Open and verify a bundle directory; see the module docstring for every check.

    ``expected_sha256`` pins the SHA-256 of the ``policy.yaml`` bytes (empty: not pinned).
    """
    bundle_dir = Path(path)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: bundle directory not found")
    mpath = bundle_dir / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{mpath}: bundle manifest not found")
    raw = mpath.read_bytes()
    msha = hashlib.sha256(raw).hexdigest()
    pin = expected_sha256.strip().lower()
    if pin and pin != msha:
        raise BundleError(
            f"{mpath}: manifest SHA-256 does not match the pinned value (swapped bundle?): "
            f"expected {pin}, got {msha}"
        )
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise BundleError(f"{mpath}: not valid YAML: {err}") from None
    manifest = parse_manifest(data, str(mpath))

    contracts = graph_contract(manifest)
    stage_paths: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    externals: dict[str, tuple[Path, ...]] = {}
    for name in ("encoder", "experts"):
        sf = manifest.stages[name]
        p = _check_file(bundle_dir, sf.file, sf.sha256, f"stage {name!r}", str(mpath))
        externals[name] = _check_onnx(p, name, contracts[name], bundle_dir)
        _check_external_hashes(bundle_dir, name, sf.external_data, externals[name], str(mpath))
        stage_paths[name] = p
        sizes[name] = p.stat().st_size + sum(x.stat().st_size for x in externals[name])
    return LoadedBundle(
        path=bundle_dir.resolve(),
        manifest=manifest,
        manifest_sha256=msha,
        stage_paths=stage_paths,
        stage_sizes=sizes,
        external_data=externals,
    )
