"""One-shot check of the native ops on a device: correctness against the CPU float64
reference, then timings of the torch and native backends.

    python benchmarks/gpu_check.py                 # on the GPU (after building with FORCE_CUDA=1)
    python benchmarks/gpu_check.py --device cpu    # dry run of the same script on the CPU

Correctness: every op output (forward, and the gradients of all seven inputs through
``plstm_dag``, per-arc transitions in P and D mode and node-level transitions with and
without an edge carry; plus the raw ``scan_forward``/``scan_backward`` with and without kept states)
on fresh random DAGs: small shuffled DAGs, a batch of MUTAG-sized graphs, a deep chain and a
wide DAG (fan-in/fan-out in the hundreds), in float32, float64 and bfloat16, against the
float64 torch backend on the CPU. Also: bitwise reproducibility on the device and a bad index
raising a ValueError without breaking the device context.

Timing: forward and forward+backward of ``plstm_dag`` (torch vs native backend, prebuilt
schedule, ``validate=False``) on batches of 1/32/128/1024 random MUTAG-sized DAGs (17 nodes,
about 20 edges), H=4, K=V=24, float32. Exit status 1 if any check fails.
"""
import argparse
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import plstm_graph  # noqa: E402
from _graphs import chain_dag, disjoint, random_dag, random_inputs  # noqa: E402
from plstm_graph.dag import build_node_schedule, build_schedule  # noqa: E402
from plstm_graph.ops import native  # noqa: E402

NAMES = ("query", "key", "value", "source", "transition", "mark", "direct")
FAILURES = []


# ---------------------------------------------------------------------------------------------
# graphs and inputs
# ---------------------------------------------------------------------------------------------
def mutag_like(rng):
    """17 nodes, about 20 edges: a molecule-sized DAG."""
    return random_dag(17, 0.5, rng, max_span=3), 17


def chain(n):
    """A path through ``n`` shuffled node ids: ``(edge_index, n)``."""
    return chain_dag(n - 1)[0], n


def wide(fan):
    """fan sources -> hub -> fan middle nodes -> sink: fan-in and fan-out of `fan`."""
    src = list(range(fan)) + [fan] * fan + list(range(fan + 1, 2 * fan + 1))
    dst = [fan] * fan + list(range(fan + 1, 2 * fan + 1)) + [2 * fan + 1] * fan
    return torch.tensor([src, dst]), 2 * fan + 2


def make_inputs(n, num_edges, num_arcs, heads, kdim, vdim, seed):
    x = random_inputs(n, num_edges, num_arcs, heads, kdim, vdim, seed)
    x["transition"] = x["transition"] / 2  # long chains keep a signal without blowing up
    return x


# ---------------------------------------------------------------------------------------------
# correctness
# ---------------------------------------------------------------------------------------------
TOL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 5e-2}


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def record(name, err, tol):
    ok = err <= tol
    if not ok:
        FAILURES.append(f"{name}: rel err {err:.2e} > {tol:.0e}")
    return ok


def check_graph(label, ei, n, device, dtypes, heads=2, kdim=8, vdim=16, seed=0, mode="P"):
    li = plstm_graph.line_graph(ei, n)
    if mode == "D":
        li = plstm_graph.multitree(ei, li)
    x64 = make_inputs(n, ei.size(1), li.size(1), heads, kdim, vdim, seed)
    gy64 = torch.randn(n, heads, vdim, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed + 1))
    # the reference: the torch backend in float64 on the CPU
    ref_in = {k: v.clone().requires_grad_() for k, v in x64.items()}
    sched_cpu = build_schedule(ei, li, n, level_method="torch")
    y_ref = plstm_graph.plstm_dag(*(ref_in[k] for k in NAMES), ei, li, schedule=sched_cpu,
                                  backend="torch")
    g_ref = torch.autograd.grad(y_ref, [ref_in[k] for k in NAMES], gy64)
    eid, lid = ei.to(device), li.to(device)
    sched = build_schedule(eid, lid, n, level_method="torch")
    worst = {}
    for dtype in dtypes:
        xin = {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in x64.items()}
        errs = []
        for recompute in (False, True):
            y = plstm_graph.plstm_dag(*(xin[k] for k in NAMES), eid, lid, schedule=sched,
                                      backend="native", recompute=recompute)
            g = torch.autograd.grad(y, [xin[k] for k in NAMES], gy64.to(device, dtype))
            errs.append(rel_err(y, y_ref))
            errs += [rel_err(a, b) for a, b in zip(g, g_ref)]
        err = max(errs)
        worst[dtype] = err
        record(f"{label} {mode} {str(dtype)[6:]} plstm_dag fwd+grads", err, TOL[dtype])
    return worst


def check_node_level(label, ei, n, device, dtypes, heads=2, kdim=8, vdim=16, seed=0):
    """Node-level transitions (transition [N, H], line_index=None), with and without an edge
    carry, through plstm_dag on the device against the float64 torch node scan on the CPU."""
    x64 = make_inputs(n, ei.size(1), n, heads, kdim, vdim, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    carry64 = torch.rand(ei.size(1), heads, dtype=torch.float64, generator=gen)
    gy64 = torch.randn(n, heads, vdim, dtype=torch.float64, generator=gen)
    refs = {}  # the float64 reference of each carry setting, once for all dtypes
    for with_carry in (False, True):
        ref_in = {k: v.clone().requires_grad_() for k, v in x64.items()}
        ref_in["carry"] = carry64.clone().requires_grad_()
        y_ref = plstm_graph.plstm_dag(*(ref_in[k] for k in NAMES), ei, None,
                                      carry=ref_in["carry"] if with_carry else None,
                                      backend="torch")
        wrt = [ref_in[k] for k in NAMES] + ([ref_in["carry"]] if with_carry else [])
        refs[with_carry] = (y_ref, torch.autograd.grad(y_ref, wrt, gy64))
    eid = ei.to(device)
    sched = build_node_schedule(eid, n, level_method="torch")
    worst = {}
    for dtype in dtypes:
        errs = []
        for with_carry, (y_ref, g_ref) in refs.items():
            xin = {k: v.to(device=device, dtype=dtype).requires_grad_()
                   for k, v in list(x64.items()) + [("carry", carry64)]}
            outs = []
            for _ in range(2):
                y = plstm_graph.plstm_dag(*(xin[k] for k in NAMES), eid, None, schedule=sched,
                                          carry=xin["carry"] if with_carry else None,
                                          backend="native")
                wrt = [xin[k] for k in NAMES] + ([xin["carry"]] if with_carry else [])
                outs.append((y, torch.autograd.grad(y, wrt, gy64.to(device, dtype))))
            (y, g), (y2, g2) = outs
            if not (torch.equal(y, y2) and all(torch.equal(a, b) for a, b in zip(g, g2))):
                FAILURES.append(f"{label} node-level {dtype}: two identical calls differ")
            errs.append(rel_err(y, y_ref))
            errs += [rel_err(a, b) for a, b in zip(g, g_ref)]
        worst[dtype] = max(errs)
        record(f"{label} node-level {str(dtype)[6:]} plstm_dag fwd+grads", worst[dtype],
               TOL[dtype])
    return worst


def check_raw_ops(device):
    """scan_forward / scan_backward directly, kept and recomputed states, vs the CPU op."""
    rng = random.Random(7)
    ei, n = disjoint([mutag_like(rng) for _ in range(24)] + [chain(60)])
    li = plstm_graph.line_graph(ei, n)
    s_cpu = build_schedule(ei, li, n)
    s_dev = build_schedule(ei.to(device), li.to(device), n)
    x = make_inputs(n, ei.size(1), li.size(1), 4, 24, 24, 3)
    worst = 0.0
    for keep in (True, False):
        args_c = [x[k] for k in NAMES] + [s_cpu.tensors()]
        args_d = [x[k].to(device) for k in NAMES] + [s_dev.tensors()]
        out_c, st_c = torch.ops.plstm_graph.scan_forward(*args_c, keep)
        out_d, st_d = torch.ops.plstm_graph.scan_forward(*args_d, keep)
        worst = max(worst, rel_err(out_d, out_c))
        if keep:
            worst = max(worst, rel_err(st_d, st_c))
        gy = torch.randn_like(out_c)
        gc = torch.ops.plstm_graph.scan_backward(gy, *args_c[:7], st_c if keep else None,
                                                 args_c[7])
        gd = torch.ops.plstm_graph.scan_backward(gy.to(device), *args_d[:7],
                                                 st_d if keep else None, args_d[7])
        worst = max([worst] + [rel_err(a, b) for a, b in zip(gd, gc)])
        gd2 = torch.ops.plstm_graph.scan_backward(gy.to(device), *args_d[:7],
                                                  st_d if keep else None, args_d[7])
        if not all(torch.equal(a, b) for a, b in zip(gd, gd2)):
            FAILURES.append(f"raw ops keep={keep}: two identical backward calls differ")
    record("raw scan_forward/scan_backward vs CPU op (float64)", worst, TOL[torch.float64])
    # a bad index is an exception, and the device stays usable
    index = s_dev.tensors()
    i = type(s_dev).FIELDS.index("in_arc")
    index[i] = index[i].clone().fill_(10 ** 6)
    bad = [x[k].to(device) for k in NAMES] + [index]
    try:
        torch.ops.plstm_graph.scan_forward(*bad, True)
        FAILURES.append("an out-of-range in_arc did not raise")
    except (ValueError, RuntimeError) as exc:
        print(f"  bad index raised {type(exc).__name__}: {str(exc).splitlines()[0][:90]}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    _ = (torch.ones(4, device=device) * 2).sum().item()
    return worst


def correctness(device, quick):
    print(f"== correctness on {device} (reference: torch backend, float64, CPU) ==")
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    rows = []
    rng = random.Random(0)
    cases = []
    for seed in range(3 if quick else 8):
        nn = rng.randint(5, 40)
        cases.append((f"random n={nn} s={seed}", random_dag(nn, rng.uniform(0.1, 0.4), rng),
                      nn, dict(seed=seed)))
    cases.append(("mutag x64 batch", *disjoint([mutag_like(rng) for _ in range(64)]),
                  dict(heads=4, kdim=24, vdim=24)))
    cases.append(("deep chain", *chain(300 if quick else 3000), dict(heads=2, kdim=8, vdim=8)))
    cases.append(("wide DAG", *wide(100 if quick else 600), dict(heads=2, kdim=8, vdim=8)))
    cases.append(("edgeless", torch.empty(2, 0, dtype=torch.long), 7, {}))
    for label, ei, n, kw in cases:
        for mode in ("P", "D"):
            if mode == "D" and ("wide" in label or "chain" in label) and quick:
                continue
            t0 = time.perf_counter()
            worst = check_graph(label, ei, n, device, dtypes, mode=mode, **kw)
            rows.append((label, mode, ei.size(1), worst, time.perf_counter() - t0))
    print(f"  {'graph':22s} {'mode':4s} {'E':>6s} " +
          " ".join(f"{str(d)[6:]:>10s}" for d in dtypes) + "   (max rel err, fwd + 7 grads)")
    for label, ei, n, kw in cases:
        if "chain" in label and quick:
            continue
        t0 = time.perf_counter()
        worst = check_node_level(label, ei, n, device, dtypes, **kw)
        rows.append((label, "node", ei.size(1), worst, time.perf_counter() - t0))
    for label, mode, ne, worst, secs in rows:
        print(f"  {label:22s} {mode:4s} {ne:6d} " +
              " ".join(f"{worst[d]:10.1e}" for d in dtypes) + f"   {secs:5.1f}s")
    raw = check_raw_ops(device)
    print(f"  raw ops vs CPU op (float64): max rel err {raw:.1e}")


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(fn, device, min_time=0.5, max_reps=200):
    fn()
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def timing(device, batches, quick):
    print(f"\n== timing on {device}: random MUTAG-sized DAGs (17 nodes, ~20 edges), H=4, "
          f"K=V=24, float32; median ms ==")
    print(f"  {'graphs':>6s} {'E':>6s} {'levels':>6s} | {'torch fwd':>10s} {'native fwd':>10s} "
          f"{'speedup':>7s} | {'torch f+b':>10s} {'native f+b':>10s} {'speedup':>7s}")
    rng = random.Random(1)
    for b in batches:
        ei, n = disjoint([mutag_like(rng) for _ in range(b)])
        li = plstm_graph.line_graph(ei, n)
        eid, lid = ei.to(device), li.to(device)
        sched = build_schedule(eid, lid, n, level_method="torch")
        x = {k: v.float().to(device).requires_grad_()
             for k, v in make_inputs(n, ei.size(1), li.size(1), 4, 24, 24, b).items()}
        args = [x[k] for k in NAMES]
        res = {}
        for backend in ("torch", "native"):
            def fwd():
                with torch.no_grad():
                    plstm_graph.plstm_dag(*args, eid, lid, schedule=sched, backend=backend,
                                          validate=False)

            def fwd_bwd():
                y = plstm_graph.plstm_dag(*args, eid, lid, schedule=sched, backend=backend,
                                          validate=False)
                torch.autograd.grad(y.sum(), args)

            t = 0.2 if quick else 1.0
            res[backend] = (bench(fwd, device, t), bench(fwd_bwd, device, t))
        (tf, tfb), (nf, nfb) = res["torch"], res["native"]
        print(f"  {b:6d} {ei.size(1):6d} {sched.num_levels:6d} | {tf:10.3f} {nf:10.3f} "
              f"{tf / nf:6.1f}x | {tfb:10.3f} {nfb:10.3f} {tfb / nfb:6.1f}x")
    # one long chain: per-level overhead
    n = 2000 if quick else 20000
    ei, n = chain(n)
    li = plstm_graph.line_graph(ei, n)
    eid, lid = ei.to(device), li.to(device)
    sched = build_schedule(eid, lid, n, level_method="torch")
    x = {k: v.float().to(device).requires_grad_()
         for k, v in make_inputs(n, ei.size(1), li.size(1), 4, 24, 24, 5).items()}
    args = [x[k] for k in NAMES]

    def chain_fb():
        y = plstm_graph.plstm_dag(*args, eid, lid, schedule=sched, backend="native",
                                  validate=False)
        torch.autograd.grad(y.sum(), args)

    t = bench(chain_fb, device, 0.5, 5)
    print(f"  chain of {n} nodes ({sched.num_levels} levels), native fwd+bwd: {t:.1f} ms "
          f"({t * 1e3 / sched.num_levels:.2f} us per level, both directions)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="smaller graphs, shorter timings")
    parser.add_argument("--batches", default="1,32,128,1024")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), plstm_graph "
          f"{plstm_graph.__version__}, native={native.WITH_NATIVE} "
          f"(built with CUDA {native.CUDA_VERSION if native.WITH_CUDA else 'no'})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("no CUDA device visible")
        print(f"device: {torch.cuda.get_device_name(device)}")
    if not native.available(device):
        sys.exit(f"native ops unavailable on {device}: {native.unavailable_reason(device)}")
    torch.manual_seed(0)
    correctness(device, args.quick)
    if not args.skip_timing:
        timing(device, [int(b) for b in args.batches.split(",")], args.quick)
    print()
    if FAILURES:
        print("FAILED:")
        for f in FAILURES:
            print("  " + f)
        sys.exit(1)
    print("ALL CHECKS PASSED")


if __name__ == "__main__":
    main()
