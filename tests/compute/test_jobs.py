"""Job kinds: matmul Freivalds catches one changed entry; infer runs an exported MLP and verifies; malicious
archives are refused without executing; attest-as-a-job round-trips."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from p2pnode.compute import jobs as J
from p2pnode.compute.jobs import infer as I
from p2pnode.compute.jobs.attest_job import AttestSpec
from p2pnode.compute.jobs.matmul import MatmulSpec, seeded_inputs


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_matmul_correct_passes_changed_entry_fails(dtype):
    spec = MatmulSpec(dtype=dtype, batch=2, m=48, k=96, n=40, source="seed", seed=bytes(range(32)), rounds=3)
    job = J.JobSpec.make("matmul", spec)
    (out,) = J.run(job, [])
    rng = np.random.default_rng(1)
    for _ in range(5):  # honest results never fail the tolerance
        assert J.verify(job, [], [out], rng=rng).ok
    width = 2 if dtype != "fp32" else 4
    code = {"fp32": "<f4", "fp16": "<f2"}.get(dtype)
    arr = bytearray(out)
    # the entry changed is the largest one: a change is caught when it exceeds the dtype's row tolerance (8 sigma
    # of the output rounding: ~3 % of the row's norm for bf16), so a tiny entry doubled may legitimately pass
    if code:
        c = np.frombuffer(out, dtype=code).copy()
        i = int(np.argmax(np.abs(c.astype(np.float64))))
        c[i] = c[i] + np.asarray(max(1.0, abs(float(c[i])) * 0.25), dtype=code)
        arr = c.astype(code).tobytes()
    else:  # bf16 bit pattern: bump the exponent of one entry (x2)
        bits = np.frombuffer(out, dtype="<u2").copy()
        i = int(np.argmax(np.abs((bits.astype(np.uint32) << 16).view(np.float32))))
        bits[i] += 0x80
        arr = bits.tobytes()
    assert len(arr) == len(out) and width
    v = J.verify(job, [], [bytes(arr)], rng=rng)
    assert not v.ok and "Freivalds" in v.reason


def test_matmul_renter_inputs_and_bad_output_size():
    a, b = seeded_inputs(MatmulSpec(dtype="fp32", batch=1, m=8, k=8, n=8, source="seed", seed=b"\x01" * 32))
    spec = MatmulSpec(dtype="fp32", batch=1, m=8, k=8, n=8)
    job = J.JobSpec.make("matmul", spec, [a, b])
    (out,) = J.run(job, [a, b])
    assert J.verify(job, [a, b], [out]).ok
    assert not J.verify(job, [a, b], [out[:-4]]).ok
    assert not J.verify(job, [b, a[:-4]], [out]).ok  # inputs not matching the spec's hashes


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(12, 32)
        self.l2 = torch.nn.Linear(32, 5)

    def forward(self, x):
        return torch.softmax(self.l2(torch.nn.functional.gelu(self.l1(x))), dim=-1)


def export_mlp(batch=16) -> bytes:
    torch.manual_seed(0)
    ep = torch.export.export(MLP(), (torch.randn(batch, 12),))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def test_infer_exported_mlp_runs_and_verifies():
    archive = export_mlp()
    x = np.random.default_rng(0).standard_normal((16, 12)).astype("<f4").tobytes()
    job = J.JobSpec.make("infer", I.InferSpec(sample_rows=6), [archive, x])
    (y,) = J.run(job, [archive, x])
    assert len(y) == 16 * 5 * 4
    assert J.verify(job, [archive, x], [y]).ok
    bad = np.frombuffer(y, "<f4").copy()
    bad[:] = bad[::-1]  # wrong everywhere: any sample catches it
    assert not J.verify(job, [archive, x], [bad.tobytes()]).ok


def rewrite(archive: bytes, edit) -> bytes:
    """Copy an archive, letting `edit(members: dict)` change it."""
    src = zipfile.ZipFile(io.BytesIO(archive))
    members = {i.filename: src.read(i) for i in src.infolist()}
    edit(members)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


class Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_archives(marker):
    base = export_mlp()
    prefix = zipfile.ZipFile(io.BytesIO(base)).namelist()[0].split("/")[0]
    # torch parses each guards_code entry as an expression and exec()s it inside the module's forward
    cmd = f"__import__('os').system('touch {marker}') == 0"

    def pickled_constant(m):
        cfg = {"config": {"c": {"path_name": "tensor_0", "is_param": False, "use_pickle": True,
                                "tensor_meta": None}}}
        m[f"{prefix}/data/constants/model_constants_config.json"] = json.dumps(cfg).encode()
        m[f"{prefix}/data/constants/tensor_0"] = pickle.dumps(Boom(marker))

    def guards(m):
        model = json.loads(m[f"{prefix}/models/model.json"])
        model["guards_code"] = [cmd]
        m[f"{prefix}/models/model.json"] = json.dumps(model).encode()

    def system_node(m):
        model = json.loads(m[f"{prefix}/models/model.json"])
        node = model["graph_module"]["graph"]["nodes"][0]
        node["target"] = "os.system"
        node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]
        m[f"{prefix}/models/model.json"] = json.dumps(model).encode()

    def unexpected_file(m):
        m[f"{prefix}/data/evil.pkl"] = pickle.dumps(Boom(marker))

    return {name: rewrite(base, fn) for name, fn in
            [("pickled constant", pickled_constant), ("guards_code", guards), ("os.system node", system_node),
             ("unexpected file", unexpected_file)]}


def test_malicious_archives_refused_without_executing(tmp_path):
    marker = tmp_path / "pwned"
    x = np.zeros((16, 12), "<f4").tobytes()
    for name, archive in malicious_archives(marker).items():
        with pytest.raises(I.ArchiveRejected):
            I.inspect_archive(archive)
        with pytest.raises(I.ArchiveRejected):  # the runner path refuses before torch sees a byte
            J.run(J.JobSpec.make("infer", I.InferSpec(), [archive, x]), [archive, x])
        assert not J.verify(J.JobSpec.make("infer", I.InferSpec(), [archive, x]), [archive, x], [b""]).ok
        assert not marker.exists(), f"{name}: payload executed"


def test_attest_job_roundtrip():
    spec = AttestSpec(seed=bytes(32), n=64, b=16, steps=10, opened=3)
    job = J.JobSpec.make("attest", spec)
    outs = J.run(job, [])
    assert J.verify(job, [], outs).ok
    fps = bytearray(outs[0])
    fps[0] ^= 1  # changes which steps are opened and breaks the chain commitment
    assert not J.verify(job, [], [bytes(fps), outs[1]]).ok


def test_malicious_archives_are_real_exploits_for_plain_torch(tmp_path):
    """Control for the test above: torch's own loader does run the pickled constant and the guards code, so the
    marker file is a working detector and "refused without executing" is a claim that could fail."""
    marker = tmp_path / "pwned"
    archives = malicious_archives(marker)
    with pytest.raises(Exception):  # torch fails later, but only after unpickling (and running) the payload
        torch.export.load(io.BytesIO(archives["pickled constant"]))
    assert marker.exists(), "the pickled constant did not execute under torch.export.load"
    marker.unlink()
    ep = torch.export.load(io.BytesIO(archives["guards_code"]))
    ep.module()(torch.zeros(16, 12))  # guards are checked on call: the exec'd guard runs os.system
    assert marker.exists(), "guards_code did not execute under torch.export.load + module()"


def test_matmul_parts_cover_c_once_in_memory_order_and_are_reported_as_they_finish():
    from p2pnode.compute.jobs import Outputs
    from p2pnode.compute.jobs.matmul import MIN_PART, MIN_ROWS, parts

    class Recorder(Outputs):
        def __init__(self):
            self.reports = []

        def ready(self, index, upto):
            self.reports.append((index, upto))

    for dtype, batch, m, k, n in (("fp32", 1, 1024, 64, 1024), ("fp32", 7, 300, 40, 300), ("fp16", 64, 128, 32, 128),
                                  ("bf16", 3, 1100, 16, 600), ("fp32", 2, 64, 8, 64)):
        spec = MatmulSpec(dtype=dtype, batch=batch, m=m, k=k, n=n, source="seed", seed=bytes([batch]) * 32)
        blocks = parts(spec)
        cells = [(b, r) for bs, rs in blocks for b in range(bs.start, bs.stop) for r in range(rs.start, rs.stop)]
        assert cells == [(b, r) for b in range(batch) for r in range(m)]  # each row of C once, in memory order
        itemsize = 4 if dtype == "fp32" else 2
        for bs, rs in blocks[:-1]:
            assert (bs.stop - bs.start) * (rs.stop - rs.start) * n * itemsize >= MIN_PART
            assert rs.stop - rs.start >= MIN_ROWS or (rs.start, rs.stop) == (0, m)
        job = J.JobSpec.make("matmul", spec)
        rec = Recorder()
        out = J.run(job, [], alloc=rec)
        size = batch * m * n * itemsize
        assert [i for i, _ in rec.reports] == [0] * (len(blocks) - 1)  # every part but the last, which is the result
        ups = [u for _, u in rec.reports]
        assert ups == sorted(set(ups)) and all(0 < u < size for u in ups)
        assert J.verify(job, [], out).ok


@pytest.mark.parametrize("dtype,batch", [("fp32", 1), ("fp32", 3), ("bf16", 2), ("fp16", 1)])
def test_matmul_check_folds_in_c_as_it_arrives_and_reaches_the_same_verdict(dtype, batch):
    """The renter folds each part of C into the check as it lands (cut anywhere, even mid-row); the verdict is
    the one a check of the whole C gives, a changed entry in an early part is still caught, and a prepared check
    given another buffer than the one it folded reads that buffer from its first row."""
    spec = MatmulSpec(dtype=dtype, batch=batch, m=150, k=64, n=70, source="seed", seed=bytes([7, batch]) * 16)
    job = J.JobSpec.make("matmul", spec)
    (c,) = J.run(job, [])
    good = bytes(c)
    item = 4 if dtype == "fp32" else 2
    bad = bytearray(good)
    bad[item * (70 * 3 + 5) + item - 1] ^= 0x40  # an exponent bit of an entry of row 3: in the first part
    cuts = [0, 1000, 1000, 70 * item * 40 + 3, len(good) // 2, len(good) - 1]
    for data, ok in ((good, True), (bytes(bad), False)):
        buf = memoryview(bytearray(len(data)))
        prepared = J.prepare(job, [], rng=np.random.default_rng(5))
        for lo, hi in zip(cuts, cuts[1:]):  # bytes arrive; the check folds in whatever whole rows are there
            buf[lo:hi] = data[lo:hi]
            J.absorb(job, prepared, 0, buf, hi)
        assert 0 < prepared.state.rows_done < batch * 150
        buf[cuts[-1]:] = data[cuts[-1]:]
        early = prepared.state.rows_done
        v = J.verify(job, [], [buf], prepared=prepared)
        assert v.ok is ok, v.reason
        assert not ok or f"; {early} of {batch * 150} rows of C checked as they arrived" in v.reason
        whole = J.verify(job, [], [data], rng=np.random.default_rng(5))
        assert whole.ok is ok
    # folded from the good C, then asked about the bad one: the bad one is read from row 0, and caught
    prepared = J.prepare(job, [], rng=np.random.default_rng(5))
    goodbuf = memoryview(bytearray(good))
    J.absorb(job, prepared, 0, goodbuf, len(good))
    J.absorb(job, prepared, 1, goodbuf, len(good))  # another output index, or a buffer of the wrong size: ignored
    J.absorb(job, prepared, 0, memoryview(bytearray(7)), 7)
    assert not J.verify(job, [], [memoryview(bad)], prepared=prepared).ok


def test_matmul_check_is_tight_enough_to_refuse_a_lower_precision_shortcut():
    """An fp32 job computed in bf16 (a ~3x shortcut on a GPU) is refused even at k = 4096, where a bound that adds
    up |r_j| times each entry's error bound (this verifier before) let it through; honest fp32 in another
    summation order (float64 then rounded) still passes, with all-positive inputs (the worst case for
    accumulation) as well."""
    rng = np.random.default_rng(3)
    for a, b in ((rng.standard_normal((1, 256, 4096), dtype=np.float32),
                  rng.standard_normal((1, 4096, 200), dtype=np.float32)),
                 (rng.random((1, 256, 4096), dtype=np.float32), rng.random((1, 4096, 200), dtype=np.float32))):
        inputs = [a.tobytes(), b.tobytes()]
        job = J.JobSpec.make("matmul", MatmulSpec(dtype="fp32", batch=1, m=256, k=4096, n=200), inputs)
        assert J.verify(job, inputs, J.run(job, inputs)).ok
        other_order = (a.astype(np.float64) @ b.astype(np.float64)).astype("<f4")
        assert J.verify(job, inputs, [other_order.tobytes()]).ok
        shortcut = (torch.from_numpy(a).bfloat16() @ torch.from_numpy(b).bfloat16()).float().numpy().astype("<f4")
        assert not J.verify(job, inputs, [shortcut.tobytes()]).ok


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_matmul_non_finite_output_from_finite_inputs_is_refused_whole_or_folded_in_parts(bad):
    spec = MatmulSpec(dtype="fp32", batch=2, m=64, k=32, n=48, source="seed", seed=b"\x09" * 32)
    job = J.JobSpec.make("matmul", spec)
    c = np.frombuffer(J.run(job, [])[0], dtype="<f4").copy()
    c[48 * 70 + 3] = bad  # batch 1, row 6
    data = memoryview(bytearray(c.tobytes()))
    v = J.verify(job, [], [data])
    assert not v.ok and "non-finite" in v.reason
    prepared = J.prepare(job, [])
    J.absorb(job, prepared, 0, data, len(data) - 100)  # the bad row folded in early, as if it came in a part
    assert prepared.state.rows_done > 70
    v = J.verify(job, [], [data], prepared=prepared)
    assert not v.ok and "non-finite" in v.reason
