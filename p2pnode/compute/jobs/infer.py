"""`infer`: a renter's ``torch.export`` program (.pt2) on renter inputs, loaded only after a safe inspection.

``torch.export.load`` executes attacker code (pickled ``opaque_obj_`` constants, ``guards_code`` passed to exec,
sympy expressions in symbolic shapes), so :func:`inspect_archive` reads the zip with the standard library and
json only and refuses anything outside a narrow format: known file names, raw (unpickled) little-endian tensors
that every config references, no guards code, no custom objects, static shapes only, no symbolic values, and
graph nodes whose targets are in :data:`ALLOWED_OPS`. The runner then rebuilds a clean archive from the checked
members (torch's own pickled ``sample_inputs`` is dropped unread and replaced by one we write) and loads that,
inside the sandbox, with ``ep.module(check_guards=False)``.

Verification (numpy, no torch): the renter recomputes a random sample of rows with a small float64 interpreter of
the same allowlisted ops and compares within tolerance. This assumes the program maps rows independently
(MLP-like: linear layers, elementwise activations, softmax/layer-norm over the last dim); a program that mixes
rows fails verification (a false reject, never a false accept).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ...wire import Record, bounded
from . import Data, JobError, Verdict


class ArchiveRejected(JobError):
    """The .pt2 archive contains something the safe loader does not accept; it was not loaded."""


ALLOWED_OPS = frozenset({
    "torch.ops.aten.linear.default", "torch.ops.aten.relu.default", "torch.ops.aten.gelu.default",
    "torch.ops.aten.tanh.default", "torch.ops.aten.sigmoid.default", "torch.ops.aten.silu.default",
    "torch.ops.aten.add.Tensor", "torch.ops.aten.sub.Tensor", "torch.ops.aten.mul.Tensor",
    "torch.ops.aten.addmm.default", "torch.ops.aten.mm.default", "torch.ops.aten.t.default",
    "torch.ops.aten.view.default", "torch.ops.aten.reshape.default", "torch.ops.aten.flatten.using_ints",
    "torch.ops.aten.softmax.int", "torch.ops.aten._softmax.default", "torch.ops.aten.layer_norm.default",
})
FIXED_FILES = {"archive_format", "archive_version", ".data/version", "byteorder", ".data/serialization_id",
               "models/model.json", "data/weights/model_weights_config.json",
               "data/constants/model_constants_config.json"}
DROPPED_FILES = {"data/sample_inputs/model.pt"}  # torch's pickle of example inputs: never read
DATA_FILE = re.compile(r"^data/(weights/weight|constants/tensor)_\d{1,6}$")
PREFIX = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
ARG_KINDS = {"as_tensor", "as_int", "as_ints", "as_float", "as_floats", "as_bool", "as_none", "as_string"}
SPEC_KINDS = {"parameter", "buffer", "user_input", "tensor_constant"}
TREESPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
DTYPES = {7: np.float32}  # torch._export.serde ScalarType.FLOAT; the interpreter is fp32-in, fp32-out
MAX_ARCHIVE = 512 << 20
MAX_MEMBERS = 512
MAX_JSON = 64 << 20


@dataclass(frozen=True)
class InferSpec(Record):
    sample_rows: int = bounded(min=1, max=4096, default=8)
    rtol: float = bounded(min=0.0, max=1.0, default=1e-3)
    atol: float = bounded(min=0.0, max=1.0, default=1e-4)


@dataclass
class Program:
    """A checked archive: its graph as parsed json, its tensors as numpy, and the members torch may read."""

    prefix: str
    model: dict[str, Any]
    tensors: dict[str, np.ndarray]  # by the name the graph's input specs use (parameter/buffer/constant)
    members: dict[str, bytes] = field(repr=False)
    input_name: str = ""
    input_shape: tuple[int, ...] = ()
    output_name: str = ""

    @property
    def graph(self) -> dict[str, Any]:
        return self.model["graph_module"]["graph"]


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArchiveRejected(f"{what}: not JSON ({exc})") from None


def _ints(sizes: Any, what: str) -> tuple[int, ...]:
    if not isinstance(sizes, list) or not all(isinstance(s, dict) and set(s) == {"as_int"} and
                                              isinstance(s["as_int"], int) and s["as_int"] >= 0 for s in sizes):
        raise ArchiveRejected(f"{what}: only static integer shapes are accepted")
    return tuple(s["as_int"] for s in sizes)


def _tensor(meta: Any, raw: bytes, what: str) -> np.ndarray:
    if not isinstance(meta, dict) or meta.get("dtype") not in DTYPES:
        raise ArchiveRejected(f"{what}: only float32 tensors are accepted")
    shape = _ints(meta.get("sizes"), what)
    strides = _ints(meta.get("strides"), what)
    want, acc = [], 1
    for s in reversed(shape):
        want.append(acc)
        acc *= s
    if tuple(reversed(want)) != strides and int(np.prod(shape)) > 1:
        raise ArchiveRejected(f"{what}: only contiguous tensors are accepted")
    if meta.get("storage_offset") not in ({"as_int": 0}, None):
        raise ArchiveRejected(f"{what}: storage offsets are not accepted")
    dt = np.dtype(DTYPES[meta["dtype"]]).newbyteorder("<")
    if len(raw) != int(np.prod(shape)) * dt.itemsize:
        raise ArchiveRejected(f"{what}: {len(raw)} bytes do not hold shape {shape}")
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def _treespec(text: Any, what: str) -> None:
    obj = _json(text.encode() if isinstance(text, str) else b"", what)

    def walk(node: Any) -> None:
        if not isinstance(node, dict) or node.get("type") not in TREESPEC_TYPES:
            raise ArchiveRejected(f"{what}: input/output structure uses a type that is not tuple/list/dict")
        for child in node.get("children_spec") or []:
            walk(child)

    if not isinstance(obj, list) or len(obj) != 2:
        raise ArchiveRejected(f"{what}: malformed tree spec")
    walk(obj[1])


def inspect_archive(data: bytes) -> Program:
    """Check a .pt2 archive without executing anything from it; raise :class:`ArchiveRejected` on any doubt."""
    if len(data) > MAX_ARCHIVE:
        raise ArchiveRejected(f"archive of {len(data)} bytes exceeds {MAX_ARCHIVE}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ArchiveRejected(f"not a zip archive ({exc})") from None
    if len(infos) > MAX_MEMBERS:
        raise ArchiveRejected(f"{len(infos)} members; at most {MAX_MEMBERS}")
    if sum(i.file_size for i in infos) > MAX_ARCHIVE:
        raise ArchiveRejected("archive expands beyond the size limit")
    prefixes = {i.filename.split("/", 1)[0] for i in infos}
    if len(prefixes) != 1 or not PREFIX.match(next(iter(prefixes))):
        raise ArchiveRejected("archive members must share one plain top-level folder")
    prefix = prefixes.pop()
    members: dict[str, bytes] = {}
    for info in infos:
        name = info.filename[len(prefix) + 1:]
        if name in members:
            raise ArchiveRejected(f"duplicate member {name!r}")
        if name in DROPPED_FILES:
            continue
        if name not in FIXED_FILES and not DATA_FILE.match(name):
            raise ArchiveRejected(f"unexpected file {info.filename!r} in the archive")
        try:
            members[name] = zf.read(info)
        except Exception as exc:
            raise ArchiveRejected(f"cannot read {info.filename!r} ({type(exc).__name__})") from None
    for required in ("archive_format", "models/model.json", "data/weights/model_weights_config.json",
                     "data/constants/model_constants_config.json"):
        if required not in members:
            raise ArchiveRejected(f"missing {required!r}")
    if members["archive_format"].strip() != b"pt2" or members.get("byteorder", b"little").strip() != b"little":
        raise ArchiveRejected("not a little-endian pt2 archive")

    referenced: set[str] = set()
    tensors: dict[str, np.ndarray] = {}
    for cfg_name, folder in (("data/weights/model_weights_config.json", "data/weights/"),
                             ("data/constants/model_constants_config.json", "data/constants/")):
        cfg = _json(members[cfg_name], cfg_name)
        entries = cfg.get("config") if isinstance(cfg, dict) and set(cfg) == {"config"} else None
        if not isinstance(entries, dict):
            raise ArchiveRejected(f"{cfg_name}: malformed")
        for key, entry in entries.items():
            if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
                raise ArchiveRejected(f"{cfg_name}: {key!r} is pickled; pickled payloads are refused")
            path = folder + str(entry.get("path_name"))
            if not DATA_FILE.match(path) or path not in members:
                raise ArchiveRejected(f"{cfg_name}: {key!r} points at a missing or invalid file")
            referenced.add(path)
            tensors[key] = _tensor(entry.get("tensor_meta"), members[path], f"{cfg_name}: {key}")
    unreferenced = {n for n in members if DATA_FILE.match(n)} - referenced
    if unreferenced:
        raise ArchiveRejected(f"unexpected file(s) {sorted(unreferenced)} not referenced by any config")

    if len(members["models/model.json"]) > MAX_JSON:
        raise ArchiveRejected("model.json too large")
    model = _json(members["models/model.json"], "model.json")
    if not isinstance(model, dict) or not isinstance(model.get("graph_module"), dict):
        raise ArchiveRejected("model.json: no graph_module")
    if model.get("guards_code"):
        raise ArchiveRejected("model.json: guards_code is refused (torch passes it to exec)")
    if model.get("range_constraints"):
        raise ArchiveRejected("model.json: symbolic shapes are refused (their expressions are parsed by sympy)")
    graph = model["graph_module"].get("graph")
    if not isinstance(graph, dict):
        raise ArchiveRejected("model.json: no graph")
    for key in ("custom_obj_values", "sym_int_values", "sym_float_values", "sym_bool_values"):
        if graph.get(key):
            raise ArchiveRejected(f"model.json: {key} is refused (custom objects / symbolic values)")
    nodes = graph.get("nodes")
    if not isinstance(nodes, list):
        raise ArchiveRejected("model.json: graph has no node list")
    for node in nodes:
        target = node.get("target") if isinstance(node, dict) else None
        if target not in ALLOWED_OPS:
            raise ArchiveRejected(f"model.json: operator {str(target)[:80]!r} is not on the allowlist")
        for inp in node.get("inputs") or []:
            arg = inp.get("arg") if isinstance(inp, dict) else None
            if not isinstance(arg, dict) or len(arg) != 1 or next(iter(arg)) not in ARG_KINDS:
                raise ArchiveRejected(f"model.json: {target} has an argument kind that is not accepted")
        for out in node.get("outputs") or []:
            if not isinstance(out, dict) or set(out) != {"as_tensor"}:
                raise ArchiveRejected(f"model.json: {target} has a non-tensor output")
    for sub in model["graph_module"].get("module_call_graph") or []:
        sig = sub.get("signature") if isinstance(sub, dict) else None
        if sig:
            _treespec(sig.get("in_spec"), "in_spec")
            _treespec(sig.get("out_spec"), "out_spec")
    sig = model["graph_module"].get("signature") or {}
    user_inputs, param_names = [], {}
    for spec in sig.get("input_specs") or []:
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPEC_KINDS:
            raise ArchiveRejected("model.json: an input kind other than parameter/buffer/constant/user tensor")
        kind, body = next(iter(spec.items()))
        if kind == "user_input":
            user_inputs.append(body["arg"]["as_tensor"]["name"])
        else:
            target = body.get({"parameter": "parameter_name", "buffer": "buffer_name",
                               "tensor_constant": "tensor_constant_name"}[kind])
            if target not in tensors:
                raise ArchiveRejected(f"model.json: {kind} {target!r} has no tensor in the archive")
            param_names[body["arg"]["name"]] = target
    outputs = sig.get("output_specs") or []
    if len(user_inputs) != 1 or len(outputs) != 1 or "user_output" not in outputs[0]:
        raise ArchiveRejected("model.json: exactly one tensor input and one tensor output are accepted")
    in_meta = graph.get("tensor_values", {}).get(user_inputs[0], {})
    if in_meta.get("dtype") not in DTYPES:
        raise ArchiveRejected("model.json: the input must be float32")
    prog = Program(prefix=prefix, model=model, tensors={a: tensors[t] for a, t in param_names.items()},
                   members=members, input_name=user_inputs[0], input_shape=_ints(in_meta.get("sizes"), "input"),
                   output_name=outputs[0]["user_output"]["arg"]["as_tensor"]["name"])
    if not prog.input_shape:
        raise ArchiveRejected("model.json: the input needs a batch dimension")
    return prog


# --- numpy interpreter (the renter's spot check) ------------------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf, otypes=[np.float64])(x)


def interpret(prog: Program, x: np.ndarray) -> np.ndarray:
    """Evaluate the checked graph in float64 on `x` (any number of rows)."""
    batch = prog.input_shape[0]
    env: dict[str, Any] = {k: v.astype(np.float64) for k, v in prog.tensors.items()}
    env[prog.input_name] = x.astype(np.float64)

    def val(arg: dict[str, Any]) -> Any:
        (kind, v), = arg.items()
        if kind == "as_tensor":
            return env[v["name"]]
        return None if kind == "as_none" else v

    for node in prog.graph["nodes"]:
        a = {i["name"]: val(i["arg"]) for i in node.get("inputs") or []}
        op = node["target"].removeprefix("torch.ops.aten.")
        s = a.get("self", a.get("input"))
        if op == "linear.default":
            y = s @ a["weight"].T + (a["bias"] if a.get("bias") is not None else 0.0)
        elif op == "relu.default":
            y = np.maximum(s, 0.0)
        elif op == "gelu.default":
            if a.get("approximate", "none") == "tanh":
                y = 0.5 * s * (1 + np.tanh(np.sqrt(2 / np.pi) * (s + 0.044715 * s**3)))
            else:
                y = 0.5 * s * (1 + _erf(s / np.sqrt(2)))
        elif op == "tanh.default":
            y = np.tanh(s)
        elif op == "sigmoid.default":
            y = 1 / (1 + np.exp(-s))
        elif op == "silu.default":
            y = s / (1 + np.exp(-s))
        elif op in ("add.Tensor", "sub.Tensor"):
            o = a["other"] * (a.get("alpha") or 1)
            y = s + o if op == "add.Tensor" else s - o
        elif op == "mul.Tensor":
            y = s * a["other"]
        elif op == "addmm.default":
            y = (a.get("beta") or 1) * s + (a.get("alpha") or 1) * (a["mat1"] @ a["mat2"])
        elif op == "mm.default":
            y = s @ a["mat2"]
        elif op == "t.default":
            y = s.T
        elif op in ("view.default", "reshape.default"):
            shape = list(a.get("size") or a.get("shape"))
            if shape and shape[0] == batch:
                shape[0] = s.shape[0]  # the graph is exported for `batch` rows; the spot check runs fewer
            y = s.reshape(shape)
        elif op == "flatten.using_ints":
            start, end = a.get("start_dim", 0) % s.ndim, a.get("end_dim", -1) % s.ndim
            y = s.reshape(s.shape[:start] + (-1,) + s.shape[end + 1:])
        elif op in ("softmax.int", "_softmax.default"):
            z = s - s.max(axis=a["dim"], keepdims=True)
            e = np.exp(z)
            y = e / e.sum(axis=a["dim"], keepdims=True)
        elif op == "layer_norm.default":
            dims = tuple(range(-len(a["normalized_shape"]), 0))
            mu = s.mean(axis=dims, keepdims=True)
            var = s.var(axis=dims, keepdims=True)
            y = (s - mu) / np.sqrt(var + a.get("eps", 1e-5))
            if a.get("weight") is not None:
                y = y * a["weight"]
            if a.get("bias") is not None:
                y = y + a["bias"]
        else:  # inspect_archive makes this unreachable
            raise ArchiveRejected(f"operator {op} has no interpreter")
        env[node["outputs"][0]["as_tensor"]["name"]] = y
    return env[prog.output_name]


def parse_input(prog: Program, data: bytes) -> np.ndarray:
    count = int(np.prod(prog.input_shape))
    if len(data) != 4 * count:
        raise JobError(f"infer: input of {len(data)} bytes; the program takes float32 {prog.input_shape}")
    return np.frombuffer(data, dtype="<f4").reshape(prog.input_shape)


# --- runner (sandbox child, torch) and verifier (numpy) -----------------------------------------------------


def clean_archive(prog: Program, sample_inputs: bytes) -> bytes:
    """A fresh zip holding only the checked members plus our own sample-inputs file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in prog.members.items():
            z.writestr(f"{prog.prefix}/{name}", data)
        z.writestr(f"{prog.prefix}/data/sample_inputs/model.pt", sample_inputs)
    return buf.getvalue()


def load_program(archive: bytes, workdir: str = "."):
    """Inspect, rebuild, then let torch load the clean archive; returns the callable module."""
    import os
    import tempfile

    import torch

    prog = inspect_archive(archive)
    own = io.BytesIO()
    torch.save(((), {}), own)  # our own trusted example-inputs file; the renter's one was dropped unread
    fd, path = tempfile.mkstemp(suffix=".pt2", dir=workdir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(clean_archive(prog, own.getvalue()))
        ep = torch.export.load(path)
    finally:
        os.unlink(path)
    return prog, ep.module(check_guards=False)


def run(spec: InferSpec, inputs: list[Data], device: str, progress: Callable[[float], None],
        alloc: Callable[[int], memoryview]) -> list[Data]:
    import torch

    prog, module = load_program(inputs[0])
    x = torch.from_numpy(parse_input(prog, inputs[1]).copy()).to(device)
    with torch.no_grad():
        y = module.to(device)(x)
    if isinstance(y, (tuple, list)):
        y = y[0]
    progress(1.0)
    out = alloc(y.numel() * 4)
    torch.frombuffer(out, dtype=torch.float32).copy_(y.detach().reshape(-1))  # little-endian fp32, as verified
    return [out]


def verify(spec: InferSpec, inputs: list[bytes], outputs: list[bytes], rng: np.random.Generator) -> Verdict:
    try:
        prog = inspect_archive(inputs[0])
        x = parse_input(prog, inputs[1])
    except JobError as exc:
        return Verdict(False, str(exc))
    batch = prog.input_shape[0]
    if len(outputs) != 1 or len(outputs[0]) % (4 * batch):
        return Verdict(False, "infer: output size is not a whole number of float32 rows")
    y = np.frombuffer(outputs[0], dtype="<f4").reshape(batch, -1)
    rows = np.sort(rng.choice(batch, size=min(spec.sample_rows, batch), replace=False))
    try:
        ref = interpret(prog, x[rows]).reshape(len(rows), -1)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return Verdict(False, f"infer: the program cannot be evaluated row-wise ({type(exc).__name__})")
    if ref.shape[1] != y.shape[1]:
        return Verdict(False, f"infer: output rows have {y.shape[1]} values, expected {ref.shape[1]}")
    got = y[rows].astype(np.float64)
    bad = ~(np.abs(got - ref) <= spec.atol + spec.rtol * np.abs(ref))
    if bad.any():
        return Verdict(False, f"infer: row {int(rows[np.argwhere(bad)[0][0]])} differs from the recomputation")
    return Verdict(True, f"{len(rows)} of {batch} rows recomputed and matched")
