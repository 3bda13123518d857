"""Every CUDA kernel once, forward and backward, at the small shapes of tests/kernel_cases.py, checked against
the references: on a GPU (``--device cuda``, the CUDA kernels of attnkern._C) or on the emulated device
(``--emulated``). scripts/gpu_check.sh runs it under each compute-sanitizer tool; it is quicker to instrument
than the test suite and launches every kernel.

    python scripts/kernel_sweep.py --device cuda --dtypes float32,bfloat16
    python scripts/kernel_sweep.py --emulated

Prints one line per case and dtype; exits 1 if any check failed.
"""

import argparse
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tools"), ROOT]

import torch  # noqa: E402

import attnkern  # noqa: E402,F401
import kernel_cases  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", choices=["cuda"], help="the CUDA kernels on the GPU")
    where.add_argument("--emulated", action="store_true", help="the CUDA kernels on the emulated device")
    parser.add_argument("--dtypes", default="float64,float32,float16,bfloat16")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: all)")
    args = parser.parse_args(argv)

    if args.emulated:
        import cuda_emulation

        cuda_emulation.load()
        backend = kernel_cases.Backend(torch.ops.attnkern_emulated, "cpu", "emulated")
    else:
        if not (torch.cuda.is_available() and attnkern.build_info()["cuda"]):
            print("no CUDA device, or attnkern built without CUDA", file=sys.stderr)
            return 2
        backend = kernel_cases.Backend(torch.ops.attnkern, "cuda", torch.cuda.get_device_name())
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    wanted = set(filter(None, args.cases.split(",")))
    cases = [c for c in kernel_cases.CASES + kernel_cases.EMPTY_CASES if not wanted or c.id in wanted]

    failures = 0
    start = time.perf_counter()
    for case in cases:
        for dtype in dtypes:
            try:
                kernel_cases.check(case.run(backend, dtype), dtype)
                status = "ok"
            except Exception:  # noqa: BLE001 — report every case, then fail
                failures += 1
                status = "FAILED\n" + traceback.format_exc()
            print(f"{backend.name}  {case.id:40s} {str(dtype):16s} {status}", flush=True)
    print(f"{len(cases) * len(dtypes) - failures} passed, {failures} failed in {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
