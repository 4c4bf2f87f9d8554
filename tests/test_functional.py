"""The layer's hand-written backward passes (plstm_graph.nn.functional) against what autograd
computes for the same math written out."""
import pytest
import torch
import torch.nn.functional as F

from plstm_graph.nn.functional import rms_norm, split_linear


def _rms_reference(y, eps):
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("shape", [(7, 3, 5), (1, 1, 1), (0, 4, 6), (11, 24)])
@pytest.mark.parametrize("eps", [1e-2, 1.0])
def test_rms_norm_matches_reference(shape, eps):
    gen = torch.Generator().manual_seed(0)
    y = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    out = rms_norm(y, eps)
    ref = _rms_reference(y, eps)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out, F.rms_norm(y, shape[-1:], None, eps))
    (dy,) = torch.autograd.grad(out, y, g)
    (dref,) = torch.autograd.grad(ref, y, g)
    torch.testing.assert_close(dy, dref)


def test_rms_norm_gradcheck():
    y = torch.randn(6, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rms_norm(t, 1e-2), (y,))
    # a row of zeros: the eps keeps the scale finite
    z = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rms_norm(t, 1e-2), (z,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_half_inputs_accumulate_in_float32(dtype):
    y = torch.randn(50, 4, 24, dtype=torch.float64)
    half = y.to(dtype).requires_grad_()
    out = rms_norm(half, 1e-2)
    assert out.dtype == dtype
    ref = _rms_reference(half.detach().double(), 1e-2)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
    (dy,) = torch.autograd.grad(out.float().sum(), half)
    assert dy.dtype == dtype and torch.isfinite(dy.float()).all()


def test_split_linear_matches_f_linear():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(13, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    ws = [torch.randn(n, 5, generator=gen, dtype=torch.float64, requires_grad=True)
          for n in (3, 4, 1, 2)]
    parts = split_linear(x, ws)
    assert [p.shape for p in parts] == [(13, 3), (13, 4), (13, 1), (13, 2)]
    refs = [F.linear(x, w) for w in ws]
    for p, r in zip(parts, refs):
        torch.testing.assert_close(p, r)
    gs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in parts]
    got = torch.autograd.grad(parts, [x, *ws], gs)
    want = torch.autograd.grad(refs, [x, *ws], gs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_split_linear_gradcheck_and_unused_outputs():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    ws = [torch.randn(n, 4, dtype=torch.float64, requires_grad=True) for n in (2, 3)]
    assert torch.autograd.gradcheck(lambda x, *w: split_linear(x, w), (x, *ws))
    # only the second part used: the first weight gets a zero gradient, x only the second's
    split_linear(x, ws)[1].sum().backward()
    assert torch.equal(ws[0].grad, torch.zeros_like(ws[0]))
    torch.testing.assert_close(x.grad, ws[1].sum(0).expand(6, 4))
