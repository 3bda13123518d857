"""The family math headers compile anywhere: plain C++17, no ATen, c10 or torch on the include path.

Each csrc/<family>/<family>.h holds the ATTNKERN_HD math that the CPU and CUDA kernels share; the
argument checks (which need at::Tensor) live in <family>_checks.h. Here every math header is compiled
alone by the host compiler, with only csrc/ on the include path, in a translation unit that also
instantiates some of its templates for float and double (so unqualified exp/sqrt resolve without ATen).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
FAMILIES = ["covpool", "criss_cross", "gating", "region_conv", "window_attention"]


def _compiler():
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CXX = _compiler()

# Calls that instantiate templates of each header, for T = float and double.
USES = {
    "covpool": """
        namespace cp = attnkern::covpool;
        (void)cp::triu_index(3, 2);
        (void)cp::trace_grad_coefficient<T>(T(1), T(2), T(3));
        const cp::SquareProducts<T, cp::SerialLanes> m{2};
        T buf[8][4] = {};
        T *y = buf[0], *z = buf[1], *t = buf[6], *w = buf[2], *gy = buf[3], *gz = buf[4], *spare = buf[5];
        cp::newton_schulz_first_step(m, buf[0], buf[1], buf[2]);
        cp::newton_schulz_first_step_in_place(m, y, z, t, w);
        cp::newton_schulz_step(m, buf[0], buf[1], buf[2], buf[3], buf[4]);
        cp::newton_schulz_step_in_place(m, y, z, buf[6], w);
        cp::newton_schulz_final_zy(m, y, z, buf[6]);
        cp::newton_schulz_final(m, y, z, buf[6], buf[7]);
        cp::newton_schulz_final_backward_first(m, buf[7], buf[6], gy);
        cp::newton_schulz_final_backward_rest(m, buf[7], y, buf[6], gy, gz, buf[6]);
        cp::newton_schulz_step_backward(m, y, z, buf[6], gy, gz, buf[7], spare, gy);
        cp::newton_schulz_step_backward_in_place(m, y, z, buf[6], gy, gz, buf[7], spare);
        cp::newton_schulz_first_step_backward_in_place(m, y, buf[6], gy, gz, buf[7], spare);
    """,
    "criss_cross": """
        namespace cc = attnkern::criss_cross;
        const T buf[64] = {};
        (void)cc::affinity_entry<T>(buf, buf, 1, 3, 4, 2, 1, 1);
        (void)cc::aggregate_entry<T>(buf, buf, 3, 4, 1, 1);
        (void)cc::aggregate_transposed_entry<T>(buf, buf, 3, 4, 1, 1);
        (void)cc::energy_grad(T(0.5), T(1), T(0));
    """,
    "gating": """
        namespace g = attnkern::gating;
        (void)g::pool_gradient(T(1), g::max_share(g::nan_max(T(1), T(2)), 2), true);
        (void)g::gated<T>(T(2), T(3));
    """,
    "region_conv": """
        namespace rc = attnkern::region_conv;
        T buf[64] = {};
        (void)rc::selected_region(buf, 3, 4);
        const T response = rc::straight_through_channels<T>(buf, buf, buf + 32, true, 0, 2, 1, 4);
        rc::guide_gradient<T>(buf, buf + 16, 3, 1, [&](int) { return response; });
        const auto geo = rc::narrow_geometry(rc::ConvGeometry{1, 3, 3, 1, 2, 2, 2, 2, 1, 1, 0, 0, 1, 1}, 16);
        (void)rc::im2col_entry<T>(buf, geo, rc::Tap(1, geo), rc::Pixel(3, geo));
        (void)rc::output_of_tap(rc::input_of_tap(1, 1, 1, 0, 1, 3), 1, 1, 0, 1, 2);
    """,
    "window_attention": """
        namespace wa = attnkern::window_attention;
        wa::WindowGrid grid{8, 8, 4, 2};
        const int region[2] = {grid.region(0, 0), grid.region(3, 15)};
        const T bias[4] = {}, mask[4] = {};
        (void)wa::logit_grad(wa::logit_offset<T>(bias, mask, region, 0, 1, 2), T(1), T(0));
        (void)wa::qkv_offset(grid.pixel(0, 0), 1, 0, 2, 8);
    """,
}


@pytest.mark.skipif(CXX is None, reason="no C++ compiler found")
@pytest.mark.parametrize("family", FAMILIES)
def test_family_header_compiles_without_aten(family, tmp_path):
    header = CSRC / family / f"{family}.h"
    assert header.is_file()
    source = tmp_path / f"{family}_alone.cpp"
    source.write_text(
        f'#include "{family}/{family}.h"\n'
        f"template <typename T> void use() {{ {USES[family]} }}\n"
        "template void use<float>();\ntemplate void use<double>();\n"
    )
    result = subprocess.run([CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-I", str(CSRC), "-x", "c++", str(source)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(CXX is None, reason="no C++ compiler found")
def test_macros_header_compiles_alone(tmp_path):
    source = tmp_path / "macros_alone.cpp"
    source.write_text('#include "common/macros.h"\nATTNKERN_HD inline int twice(int x) { return 2 * x; }\n'
                      "int main() { return twice(0); }\n")
    result = subprocess.run([CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-I", str(CSRC), "-x", "c++", str(source)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
