"""Build attnkern._C: the CPU kernels always, the CUDA kernels when a toolkit is usable.

Environment:
  ATTNKERN_CPU_ONLY=1    never compile CUDA kernels.
  ATTNKERN_SANITIZE=address,undefined
                         a separate CPU-only build with those sanitizers (and -fno-wrapv, so that signed
                         overflow is reported): objects in build/temp-sanitize, the extension and its
                         _build_config.py in build/sanitize/attnkern (copy the Python package there:
                         `make test-sanitizers` does, and runs the tests on it).
  FORCE_CUDA=1           compile CUDA kernels even when no GPU is visible (needs a toolkit).
  TORCH_CUDA_ARCH_LIST   target architectures; defaults to DEFAULT_ARCHS when no GPU is visible.
  CUDA_HOME / CUDA_PATH  the toolkit to use; otherwise found from `nvcc` (following wrappers).
"""

import glob
import os
import re
import shutil
import sys

from setuptools import setup

DEFAULT_ARCHS = "8.0;8.6;9.0+PTX"  # nvcc 13 supports sm_75 and newer only
ROOT = os.path.dirname(os.path.abspath(__file__))
SANITIZE_LIB = os.path.join(ROOT, "build", "sanitize")  # where ATTNKERN_SANITIZE builds put the package


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _has_cudart(home: str) -> bool:
    return os.path.isfile(os.path.join(home, "lib64", "libcudart.so")) or bool(
        glob.glob(os.path.join(home, "targets", "*", "lib", "libcudart.so"))
    )


def _find_cuda_home():
    """The CUDA toolkit root, or None. Torch guesses it from `nvcc`'s directory, which is wrong
    when `nvcc` is a wrapper script outside the toolkit; so follow the wrapper to the real one."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
        try:
            with open(real, "rb") as f:
                head = f.read(4096)
            if head.startswith(b"#!"):  # a script: look for the nvcc it runs
                for target in re.findall(rb"(/[^\s\"']+)/bin/nvcc", head):
                    candidates.append(target.decode())
        except OSError:
            pass
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if home and _has_cudart(home):
            return home
    return None


def _extension():
    # CUDA_HOME must be right before torch.utils.cpp_extension is imported: it reads it at import.
    cuda_home = _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home

    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    force_cuda = _env_flag("FORCE_CUDA")
    sanitize = os.environ.get("ATTNKERN_SANITIZE", "")
    if _env_flag("ATTNKERN_CPU_ONLY") or sanitize:
        with_cuda = False
    elif torch.version.cuda is None:
        if force_cuda:
            raise RuntimeError("FORCE_CUDA=1 but this torch is a CPU-only build (torch.version.cuda is None)")
        with_cuda = False
    elif cuda_home is None:
        if force_cuda:
            raise RuntimeError(
                "FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to a toolkit with lib64/libcudart.so"
            )
        with_cuda = False
    else:
        with_cuda = force_cuda or torch.cuda.is_available()

    if with_cuda and not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*", "*.cu")))

    # ATen's at::parallel_for is inline in the headers and runs serially unless the extension itself is
    # compiled with OpenMP; -fopenmp links libgomp.so.1, the runtime torch has already loaded.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx_flags = ["-O3"] + openmp
    link_flags = list(openmp)
    # After Python's own flags, which include -fwrapv (signed overflow must stay undefined here) and -g: a
    # report's stack trace needs only line tables (-g1); full debug information took 1.7× the build time.
    if sanitize:
        sanitizer_flags = [f"-fsanitize={sanitize}", "-fno-wrapv", "-fno-omit-frame-pointer", "-g1"]
        cxx_flags = ["-O1"] + openmp + sanitizer_flags
        link_flags += [f"-fsanitize={sanitize}"]
    define_macros = []
    if with_cuda:
        define_macros.append(("ATTNKERN_WITH_CUDA", None))
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-Xptxas=-v", "-lineinfo"]
        ext = CUDAExtension(
            "attnkern._C",
            sources + cuda_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    else:
        ext = CppExtension(
            "attnkern._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
    if with_cuda and not archs:
        archs = ";".join(f"{major}.{minor}" for major, minor in
                         {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    _write_build_config(
        os.path.join(SANITIZE_LIB if sanitize else ROOT, "attnkern", "_build_config.py"),
        with_cuda=with_cuda,
        cuda_archs=archs,
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda if with_cuda else None,
        cuda_home=cuda_home if with_cuda else None,
    )
    class BuildExt(BuildExtension):
        """Keeps object files in build/temp (not a fresh temporary directory, as editable installs
        use), so that ninja rebuilds only what changed; a sanitizer build in build/temp-sanitize, its
        extension in build/sanitize."""

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(ROOT, "build", "temp-sanitize" if sanitize else "temp")
            if sanitize:
                self.inplace, self.build_lib = False, SANITIZE_LIB

    return ext, BuildExt


def _write_build_config(path, **config):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = "".join(f"{key} = {value!r}\n" for key, value in config.items())
    with open(path, "w") as f:
        f.write('"""Written by setup.py at build time: what attnkern._C was compiled with."""\n\n' + body)


ext, build_ext = _extension()
setup(
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext.with_options(use_ninja=True)},
    package_data={"attnkern": ["_build_config.py"]},
)
