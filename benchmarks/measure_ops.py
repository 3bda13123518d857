"""Measured op times next to the performance model's, at the model's benchmark shapes.

    python benchmarks/measure_ops.py [--device cuda] [--dtype bfloat16] [--family window_attention]
                                     [--gpu h200|h100] [--json FILE] [--smoke]

For the two families whose kernels have a target against their floor (issue 13: window attention and
criss-cross attention), each op runs twice at every shape of perf_model.SHAPES: its hand-written kernels
(inside ``attnkern.ops.cuda_kernels("always")``) and its plain formulation (``attnkern.ops._plain``: SDPA, the
einsums). Each is timed forward, and forward + backward (the gradients of every input), as the median of
host-timed repetitions with a device synchronisation after each (launches included, as the model counts them);
the backward is the difference. The table puts the model's figures (perf_model.evaluate, its ptxas table
build/ptxas.txt over the committed one) beside them, and measured / modelled: on a GPU these are the figures
that replace the model's (scripts/gpu_check.sh runs this script), with the largest difference between the two
forward outputs (relative to the plain one's largest value), so that what is timed is seen to agree. On the
CPU the model's columns stay empty (it models a GPU); --smoke runs small shapes: it checks the script, not the
kernels.
"""

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import attnkern
from attnkern.bench.runner import median_ms
from attnkern.ops import _plain

import perf_model  # benchmarks/perf_model.py, beside this script (the first entry of sys.path when it runs)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Small stand-ins for --smoke, one a family (the parameters of perf_model.SHAPES).
SMOKE_SHAPES = [
    ("window_attention", "smoke 2×8×8 C8 h2 w4 s2", dict(B=2, H=8, W=8, C=8, heads=2, window=4, shift=2)),
    ("criss_cross", "smoke 2×16×6×5", dict(B=2, C=16, H=6, W=5)),
]


Inputs = Tuple[torch.Tensor, ...]


def window_attention_inputs(p: dict, device: str, dtype: torch.dtype) -> Inputs:
    """qkv [B, H, W, 3, heads, d] and the bias [heads, N, N], as a Swin block's attention feeds the op."""
    d, N = p["C"] // p["heads"], p["window"] ** 2
    qkv = torch.randn(p["B"], p["H"], p["W"], 3, p["heads"], d, device=device, dtype=dtype)
    bias = 0.1 * torch.randn(p["heads"], N, N, device=device, dtype=dtype)
    return qkv, bias


def criss_cross_inputs(p: dict, device: str, dtype: torch.dtype) -> Inputs:
    """q, k [B, C/8, H, W] and v [B, C, H, W], as CCNet's module feeds the op."""
    B, C, H, W = p["B"], p["C"], p["H"], p["W"]
    q, k = (torch.randn(B, C // 8, H, W, device=device, dtype=dtype) for _ in range(2))
    return q, k, torch.randn(B, C, H, W, device=device, dtype=dtype)


# family → (the model's op name, inputs, the kernel op, the plain formulation), each call (inputs, parameters)
OPS: Dict[str, Tuple[str, Callable[..., Inputs], Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "window_attention": ("window_attention", window_attention_inputs,
                         lambda x, p: attnkern.ops.window_attention(*x, p["window"], p["shift"]),
                         lambda x, p: _plain.window_attention(*x, p["window"], p["shift"])),
    "criss_cross": ("criss_cross_attention", criss_cross_inputs,
                    lambda x, p: attnkern.ops.criss_cross_attention(*x),
                    lambda x, p: _plain.criss_cross_attention(*x)),
}


def time_op(fn: Callable[[Inputs, dict], torch.Tensor], inputs: Inputs, p: dict, device: str,
            budget_s: float) -> Tuple[float, float]:
    """(forward, backward) milliseconds: the forward alone, and forward + backward less it."""
    leaves = tuple(x.detach().requires_grad_() for x in inputs)
    grad = torch.randn_like(fn(leaves, p))

    def forward() -> None:
        with torch.no_grad():
            fn(leaves, p)

    def forward_backward() -> None:
        torch.autograd.backward(fn(leaves, p), grad, inputs=list(leaves))
        for x in leaves:
            x.grad = None

    fwd = median_ms(forward, device, budget_s=budget_s)
    return fwd, max(0.0, median_ms(forward_backward, device, budget_s=budget_s) - fwd)


def measure(families: Sequence[str], device: str, dtype: torch.dtype, smoke: bool,
            budget_s: float) -> List[dict]:
    """One row per (shape, direction): measured kernel and plain milliseconds."""
    shapes = SMOKE_SHAPES if smoke else [(f, c, p) for f, c, p, _ in perf_model.SHAPES]
    rows = []
    for family, case, p in shapes:
        if family not in families:
            continue
        op, make_inputs, kernel, plain = OPS[family]
        torch.manual_seed(0)
        inputs = make_inputs(p, device, dtype)
        with attnkern.ops.cuda_kernels("always"), torch.no_grad():
            ours = kernel(inputs, p).float()
        with torch.no_grad():
            theirs = plain(inputs, p).float()
        # the two outputs' largest difference, relative to the plain output's largest value: what is timed agrees
        difference = ((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30)).item()
        with attnkern.ops.cuda_kernels("always"):
            kernel_ms = time_op(kernel, inputs, p, device, budget_s)
        plain_ms = time_op(plain, inputs, p, device, budget_s)
        for i, direction in enumerate(("fwd", "bwd")):
            rows.append(dict(family=family, op=op, case=case, direction=direction, kernel_ms=kernel_ms[i],
                             plain_ms=plain_ms[i], difference=difference))
    return rows


def with_model(rows: List[dict], gpu: str, dtype: str) -> List[dict]:
    """The rows with the model's kernel and plain milliseconds for the same op, shape, direction and dtype."""
    table, _ = perf_model.load_ptxas(None)
    modelled = {(r["op"], r["case"], r["direction"]): r
                for r in perf_model.evaluate(perf_model.Device(gpu), table, dtype)}
    out = []
    for row in rows:
        m = modelled[(row["op"], row["case"], row["direction"])]
        out.append(dict(row, model_kernel_ms=m["time"] * 1e3, model_plain_ms=m["plain"] * 1e3))
    return out


def markdown(rows: List[dict], title: str) -> str:
    def ms(v: Optional[float]) -> str:
        return "—" if v is None else f"{v * 1e3:,.1f}"  # µs

    def ratio(a: Optional[float], b: Optional[float]) -> str:
        return "—" if a is None or not b else f"{a / b:.2f}"

    lines = [f"## {title}", "",
             "| op | shape | dir | kernel µs | plain µs | kernel / plain | model kernel µs | model plain µs | "
             "measured / model (kernel) | outputs' difference |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mk, mp = r.get("model_kernel_ms"), r.get("model_plain_ms")
        lines.append(f"| {r['op']} | {r['case']} | {r['direction']} | {ms(r['kernel_ms'])} | {ms(r['plain_ms'])} | "
                     f"{ratio(r['kernel_ms'], r['plain_ms'])} | {ms(mk)} | {ms(mp)} | {ratio(r['kernel_ms'], mk)} | "
                     f"{r['difference']:.1e} |")
    return "\n".join(lines) + "\n"


def default_gpu() -> str:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return "h100" if "H100" in name else "h200"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--family", action="append", choices=sorted(OPS), help="only this family (repeatable)")
    parser.add_argument("--gpu", choices=["h100", "h200"], help="the model's GPU (default: the device's, else h200)")
    parser.add_argument("--budget", type=float, default=0.5, metavar="SECONDS", help="timing budget a measurement")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--smoke", action="store_true", help="small shapes, no model columns (checks the script)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("measure_ops: --device cuda, but torch sees no GPU")
    rows = measure(args.family or sorted(OPS), device, DTYPES[args.dtype], args.smoke, args.budget)
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    if device == "cuda" and not args.smoke:  # the model is of a GPU: no columns beside CPU timings
        gpu = args.gpu or default_gpu()
        rows = with_model(rows, gpu, args.dtype)
        where += f"; model: {gpu}"
    print(markdown(rows, f"Measured ops, {args.dtype}, {where}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
