"""What the compiled CUDA kernels are made of, from the built extension's SASS and ptxas's resource report.

    python scripts/sass_check.py [--library attnkern/_C*.so] [--ptxas build/ptxas.txt]

Checks, for every architecture the extension carries SASS for (setup.py: sm_80, sm_86, sm_90):
  * the tensor-core kernels (window_attention_mma.cuh: names containing "mma_") issue HMMA instructions
    (mma.sync) and LDSM (ldmatrix), and no other kernel issues HMMA;
  * ptxas spilled no register of any kernel (build/ptxas.txt, the `make build` summary of -Xptxas -v).
Prints a table (kernel, arch, HMMA, LDSM) and exits 1 on a failed check, 2 when cuobjdump or the
library's SASS is missing. cuobjdump comes from PATH, $CUDA_HOME/bin, or the copy Triton ships beside torch.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSOR_CORE_MARK = "mma_"


def find_cuobjdump() -> Optional[str]:
    found = shutil.which("cuobjdump")
    if found:
        return found
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidates = [os.path.join(cuda_home, "bin", "cuobjdump")]
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def sass_counts(sass: str) -> Dict[Tuple[str, str], Dict[str, int]]:
    """(mangled kernel, arch) → instruction counts of HMMA and LDSM."""
    counts: Dict[Tuple[str, str], Dict[str, int]] = defaultdict(lambda: {"HMMA": 0, "LDSM": 0})
    arch, kernel = "?", None
    for line in sass.splitlines():
        if m := re.match(r"\s*arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            kernel = m.group(1)
            counts[(kernel, arch)]  # a kernel without either instruction is listed too
        elif kernel is not None:
            for op in ("HMMA", "LDSM"):
                if re.search(rf"\b{op}\.", line):
                    counts[(kernel, arch)][op] += 1
    return counts


def spills(ptxas: str) -> List[str]:
    """The kernels ptxas spilled registers of."""
    found, kernel = [], None
    for line in ptxas.splitlines():
        if m := re.search(r"Function properties for (\S+)", line):
            kernel = m.group(1)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            if int(m.group(1)) or int(m.group(2)):
                found.append(f"{kernel}: {m.group(0)}")
    return found


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", default=None, help="the extension (default: attnkern/_C*.so of this checkout)")
    parser.add_argument("--ptxas", default=os.path.join(ROOT, "build", "ptxas.txt"))
    args = parser.parse_args(argv)
    library = args.library or next(iter(glob.glob(os.path.join(ROOT, "attnkern", "_C*.so"))), None)
    tool = find_cuobjdump()
    if library is None or tool is None:
        print(f"sass_check: {'no extension built' if library is None else 'cuobjdump not found'}", file=sys.stderr)
        return 2
    run = subprocess.run([tool, "-sass", library], capture_output=True, text=True)
    counts = sass_counts(run.stdout)
    if run.returncode != 0 or not counts:
        print(f"sass_check: no SASS in {library} (a build without CUDA?)\n{run.stderr[-2000:]}", file=sys.stderr)
        return 2
    failures = []
    print(f"{'kernel':<60} {'arch':<6} {'HMMA':>5} {'LDSM':>5}")
    for (kernel, arch), c in sorted(counts.items(), key=lambda kv: (TENSOR_CORE_MARK not in kv[0][0], kv[0])):
        tensor_core = TENSOR_CORE_MARK in kernel
        if tensor_core or c["HMMA"]:
            print(f"{kernel[:60]:<60} {arch:<6} {c['HMMA']:>5} {c['LDSM']:>5}")
        if tensor_core and not (c["HMMA"] and c["LDSM"]):
            failures.append(f"{kernel} ({arch}): a tensor-core kernel without HMMA/LDSM")
        if not tensor_core and c["HMMA"]:
            failures.append(f"{kernel} ({arch}): HMMA in a kernel not meant for tensor cores")
    if not any(TENSOR_CORE_MARK in k for k, _ in counts):
        failures.append("no tensor-core kernel in the library")
    print(f"{len({k for k, _ in counts})} kernels, architectures {sorted({a for _, a in counts})}")
    if os.path.exists(args.ptxas):
        with open(args.ptxas) as f:
            spilled = spills(f.read())
        failures += [f"spill: {s}" for s in spilled]
        print(f"ptxas ({args.ptxas}): {'no spills' if not spilled else f'{len(spilled)} kernels spill'}")
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
