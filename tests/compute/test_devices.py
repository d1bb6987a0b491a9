"""Device detection on this CUDA-less machine: one cpu device, capped by the node's limit, valid on the wire."""

from p2pnode.compute.devices import detect_devices, total_memory_bytes
from p2pnode.wire import Device


def test_cpu_device_without_cuda():
    devs = detect_devices()
    assert len(devs) == 1
    d = devs[0]
    assert d.kind == "cpu" and d.name
    assert d.mem_bytes == total_memory_bytes() > 0


def test_memory_cap_and_offer_device_roundtrip():
    (d,) = detect_devices(max_memory_bytes=2**30)
    assert d.mem_bytes == 2**30
    wire = d.to_offer_device()
    assert isinstance(wire, Device)
    again = Device.from_wire(wire.to_wire())
    assert again == wire and again.kind == "cpu" and again.tflops == 0.0 and again.attested_by == ""
