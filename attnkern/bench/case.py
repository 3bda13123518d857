"""What a benchmark family module builds: :class:`Case` (one shape, the implementations to compare on
it) and :class:`Result` (one row of the table), with helpers for common kinds of cases.

A family module (``attnkern.bench.<family>``) defines ``cases(device, smoke) -> list[Case]``.
"""

import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import attnkern

Inputs = Tuple[torch.Tensor, ...]


def cpu_capability() -> str:
    """The capability attnkern's CPU kernels run with in this process."""
    return attnkern.build_info()["cpu_capability"]


@dataclass
class Case:
    """One shape of one family: fresh inputs, and the implementations to compare on them."""

    family: str  # the row label; several family modules may share one
    shape: str
    dtype: torch.dtype
    make_inputs: Callable[[], Inputs]  # floating inputs that need a gradient have requires_grad
    impls: Dict[str, Callable[..., torch.Tensor]]  # name → fn(*inputs) → output
    skip: Dict[str, str] = field(default_factory=dict)  # name → why it is not run
    notes: Dict[str, str] = field(default_factory=dict)  # name → a note for its row
    forward_only: bool = False  # inference rows: no backward; peak memory of the forward

    def result(self, impl: str, device: str, note: str = "") -> "Result":
        """An empty row of the table for one implementation of this case."""
        capability = cpu_capability() if device == "cpu" else ""
        return Result(self.family, self.shape, str(self.dtype).replace("torch.", ""), impl, device, capability,
                      note=note)


@dataclass
class Result:
    """One row of the table: an implementation of a case, its times (ms) and peak memory (MiB)."""

    family: str
    shape: str
    dtype: str
    impl: str
    device: str
    cpu_capability: str  # the CPU rows' capability ("" on CUDA)
    fwd_ms: Optional[float] = None
    fwd_bwd_ms: Optional[float] = None
    peak_mib: Optional[float] = None
    note: str = ""


def bench_dtypes(device: str) -> List[torch.dtype]:
    """The dtypes a family is measured in: float32, and bfloat16 on CUDA."""
    return [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])


def random_inputs(*shapes: Sequence[int], device: str, dtype: torch.dtype) -> Callable[[], Inputs]:
    """A Case's make_inputs: fresh standard-normal tensors of these shapes, each requiring a gradient."""
    def make_inputs() -> Inputs:
        return tuple(torch.randn(*shape, device=device, dtype=dtype, requires_grad=True) for shape in shapes)

    return make_inputs


KERNELS_ROW = "attnkern kernels"


def with_kernels_row(impls: Dict[str, Callable[..., torch.Tensor]], device: str,
                     name: str = "attnkern") -> Dict[str, Callable[..., torch.Tensor]]:
    """impls plus, on CUDA, a KERNELS_ROW: impls[name] run under ``attnkern.ops.cuda_kernels("always")``,
    the hand-written kernels even where the routing table routes to the plain formulation (the forward
    chooses; the backward follows it). On the CPU impls unchanged (routing is CUDA-only)."""
    if device != "cuda":
        return impls
    fn = impls[name]

    def kernels(*inputs):
        with attnkern.ops.cuda_kernels("always"):
            return fn(*inputs)

    return {**impls, KERNELS_ROW: kernels}


def layer_cases(layers: Callable[[int], list], shapes: Sequence[Tuple[int, int, int, int]], device: str) -> List[Case]:
    """Cases comparing drop-in layers with their seeds, same weights, in training mode: for each
    [B, C, H, W] shape, `layers(C)` lists (family, seed module, attnkern module, the seed's row name);
    rows: the seed, the seed under torch.compile, attnkern."""
    cases = []
    for b, c, h, w in shapes:
        for dtype in bench_dtypes(device):
            for family, seed, layer, seed_name in layers(c):
                seed = seed.to(device=device, dtype=dtype)
                layer = layer.to(device=device, dtype=dtype)
                layer.load_state_dict(seed.state_dict())
                impls = {seed_name: seed, f"{seed_name}, compiled": torch.compile(seed, dynamic=False), "attnkern": layer}
                cases.append(Case(family=family, shape=f"{b}×{c}×{h}×{w}", dtype=dtype,
                                  make_inputs=random_inputs((b, c, h, w), device=device, dtype=dtype), impls=impls))
    return cases


ONNX_RUNTIME = "ONNX Runtime"
Row = Tuple[Dict[str, Callable[..., torch.Tensor]], Dict[str, str], Dict[str, str]]


def onnxruntime_row(module: torch.nn.Module, example: torch.Tensor, device: str) -> Row:
    """An "ONNX Runtime" row for a case: the module exported to ONNX (attnkern's standard-op
    formulation, dynamic batch/height/width) and run by ONNX Runtime on the CPU with torch's thread
    count; fn returns the first output. Returns the (impls, skip, notes) entries to merge into the Case:
    a skipped row where onnxruntime is not installed; no row on CUDA or under a CPU-capability limit
    (ONNX Runtime dispatches on the instruction set itself: its row is measured once, unlimited)."""
    if device != "cpu" or os.environ.get("ATTNKERN_CPU_CAPABILITY"):
        return {}, {}, {}
    try:
        import onnxruntime
    except ImportError:
        return {ONNX_RUNTIME: lambda *inputs: None}, {ONNX_RUNTIME: "onnxruntime not installed (pip install onnxruntime)"}, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(module.eval(), (example,), path, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}})
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([output], {"x": x.detach().numpy()})[0])

    note = (f"onnxruntime {onnxruntime.__version__}, CPU; peak memory: its arena, allocated at the warm-up and "
            "reused, is not counted")
    return {ONNX_RUNTIME: run}, {}, {ONNX_RUNTIME: note}
