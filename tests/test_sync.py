"""Between the clean forward pass and the last one, evaluate_batch never makes the host wait for
the device: no .item(), int(), float(), bool() (an `if` on a tensor) or copy to the CPU
(docs/performance.md, Host synchronisation). On a GPU each of those stalls the queue of 40
attack steps; on the CPU the same code path is checked by making every such call raise."""

from contextlib import contextmanager

import pytest
import torch

from protobench.core.protocol import EvalProtocol
from protobench.run import benchmark
from protobench.run.forward import Runtime, frozen_eval, model_forward

HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


class HostRead(AssertionError):
    pass


def _batch(adapter, n=6):
    size = adapter.info.input_size
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g) * 4 - 2, torch.arange(n) % adapter.info.num_classes, torch.arange(n)


def guarded_forward(forward, steps, guard):
    """`forward`, with `guard` entered after the first (clean) call and left before the last:
    the region of protect() and the attack's steps."""
    calls, state = [0], {}

    def wrapped(x):
        calls[0] += 1
        if calls[0] == steps + 2:
            state.pop("guard").__exit__(None, None, None)
        out = forward(x)
        if calls[0] == 1:
            state["guard"] = guard()
            state["guard"].__enter__()
        return out

    return wrapped, calls


@contextmanager
def no_host_reads(monkeypatch):
    def refuse(name):
        def raiser(*args, **kwargs):
            raise HostRead(f"Tensor.{name} called between the clean forward pass and the last one")
        return raiser

    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, refuse(name))
        yield


@pytest.mark.parametrize("chunk", [None, 4])  # a GPU's whole batch; the CPU's fixed (padded) chunks
def test_no_host_read_inside_the_attack(tiny_adapter, monkeypatch, chunk):
    x, y, ids = _batch(tiny_adapter)
    protocol = EvalProtocol.make(steps=3)
    slots = benchmark.attack_slots(tiny_adapter.prototype_class_identity, protocol.select)
    forward, calls = guarded_forward(model_forward(tiny_adapter, Runtime(chunk=chunk)), protocol.steps,
                                     lambda: no_host_reads(monkeypatch))
    with frozen_eval(tiny_adapter.model):
        guarded = benchmark.evaluate_batch(tiny_adapter, x, y, ids, protocol, forward, slots=slots)
        plain = benchmark.evaluate_batch(tiny_adapter, x, y, ids, protocol, model_forward(tiny_adapter, Runtime(chunk=chunk)))
    assert calls[0] == protocol.steps + 2  # the guard covered protect() and every step
    for key, value in plain.items():  # and the results are the same, bit for bit
        assert torch.equal(guarded[key], value), key


def test_the_guard_catches_a_host_read(tiny_adapter, monkeypatch):
    """The check above can fail: an int() on a tensor inside the guarded region raises."""
    with no_host_reads(monkeypatch), pytest.raises(HostRead):
        int(torch.tensor(3).sum())


def test_attack_slots_cover_every_image():
    """K from the identity, worked out once, is at least every image's attacked count."""
    identity = torch.zeros(7, 3)
    identity[[0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 1, 2, 0]] = 1  # class 0 has 4 prototypes, 1 has 2, 2 has 1
    assert benchmark.attack_slots(identity, "gt-protos") == 4
    assert benchmark.attack_slots(identity, "top-proto") == 1


@pytest.mark.gpu
def test_no_sync_inside_the_attack_on_cuda(tiny_adapter):
    """torch's own detector: any synchronising CUDA call in the guarded region raises."""
    @contextmanager
    def sync_errors():
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    class Guard:
        def __enter__(self):
            self.cm = sync_errors()
            self.cm.__enter__()

        def __exit__(self, *exc):
            self.cm.__exit__(*exc)

    tiny_adapter.to("cuda")
    x, y, ids = _batch(tiny_adapter, 8)
    protocol = EvalProtocol.make(steps=4)
    slots = benchmark.attack_slots(tiny_adapter.prototype_class_identity, protocol.select)
    runtime = Runtime.for_device(torch.device("cuda"))
    forward, calls = guarded_forward(model_forward(tiny_adapter, runtime), protocol.steps, Guard)
    with frozen_eval(tiny_adapter.model):
        x, y = x.cuda(), y.cuda()
        benchmark.evaluate_batch(tiny_adapter, x, y, ids.pin_memory(), protocol, forward, slots=slots)
    assert calls[0] == protocol.steps + 2
