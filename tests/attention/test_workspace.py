"""The attention op's reused buffers: reuse across calls, no stale reads, bounded idle memory."""

import pytest
import torch

from sparsedino.attention import attention, workspace


@pytest.fixture(autouse=True)
def _empty_pool():
    workspace.release()
    yield
    workspace.release()


def _qkv(n, b=4, requires_grad=True):
    # scores of 4 * 6 * n * n float32: 1.5 MB at n = 128, above workspace.MIN_BYTES
    return [torch.randn(b, 6, n, 32, requires_grad=requires_grad) for _ in range(3)]


def test_buffers_are_taken_and_given_back():
    t, lease = workspace.take((1024, 512), torch.float32, torch.device("cpu"))
    ptr = t.data_ptr()
    workspace.give(t, lease)
    workspace.give(t, lease)  # a second give is ignored (no double hand-out)
    a, lease_a = workspace.take((512, 1024), torch.float32, torch.device("cpu"))
    b, _ = workspace.take((512, 1024), torch.float32, torch.device("cpu"))
    assert a.data_ptr() == ptr and b.data_ptr() != ptr  # same size, any shape: reused once
    assert not workspace.valid(t, lease) and workspace.valid(a, lease_a)
    _, small_lease = workspace.take((10,), torch.float32, torch.device("cpu"))
    assert small_lease == (0, 0)  # below MIN_BYTES: a plain allocation


def test_training_calls_reuse_their_buffers_and_keep_none_in_use():
    q, k, v = _qkv(n=128)
    attention(q, k, v).sum().backward()
    idle = workspace.idle_bytes()
    assert idle >= 2 * 4 * 6 * 128 * 128 * 4  # probabilities and their gradient, given back after backward
    for _ in range(3):
        attention(q, k, v).sum().backward()
    assert workspace.idle_bytes() == idle  # nothing new was allocated, nothing leaked
    with torch.no_grad():
        attention(q, k, v)
    assert workspace.idle_bytes() == idle


def test_retain_graph_backward_after_the_buffer_was_reused_is_still_exact():
    q, k, v = _qkv(n=128)
    g = torch.randn(q.shape)
    out = attention(q, k, v)
    first = torch.autograd.grad(out, (q, k, v), g, retain_graph=True)
    # another call takes the buffer the first one gave back and overwrites it
    attention(torch.randn_like(q), torch.randn_like(k), v).sum().backward()
    second = torch.autograd.grad(out, (q, k, v), g)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_idle_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(workspace, "MAX_IDLE_BYTES", 3 << 20)
    bufs = [workspace.take((1 << 18,), torch.float32, torch.device("cpu")) for _ in range(4)]  # 1 MB each
    for t, lease in bufs:
        workspace.give(t, lease)
    assert workspace.idle_bytes() == 3 << 20


def test_a_call_in_inference_mode_then_one_outside_share_the_buffers():
    """Buffers taken under torch.inference_mode() stay writable afterwards (timm's tests, eval then train)."""
    q, k, v = _qkv(n=128, requires_grad=False)
    with torch.inference_mode():
        expected = attention(q, k, v)
    assert workspace.idle_bytes() > 0
    torch.testing.assert_close(attention(q, k, v), expected)  # the same buffers, outside inference mode
    q.requires_grad_()
    attention(q, k, v).sum().backward()
    with torch.inference_mode():
        attention(q.detach(), k, v)  # and back
