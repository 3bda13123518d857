"""Deploying and scaling Ultralytics YOLO models with attnkern layers (the YAMLs in configs/):
``export(format="onnx")`` and ONNX Runtime inference through ``YOLO("….onnx").predict``; TorchScript
files with the kernels and portable ones that run without attnkern; ``torch.export`` of a detector;
multi-GPU (DDP) training's generated worker script with attnkern's trainer class.

Ultralytics runs offline with auto-install off; every file it writes goes to a temporary folder.
Needs ultralytics, onnx and onnxruntime (the test extra); skipped without them.
"""

import atexit
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

_CONFIG_DIR = tempfile.mkdtemp(prefix="attnkern-yolo-deploy-")
atexit.register(shutil.rmtree, _CONFIG_DIR, ignore_errors=True)
os.environ.setdefault("YOLO_CONFIG_DIR", _CONFIG_DIR)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

pytest.importorskip("ultralytics")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import ultralytics.utils.checks  # noqa: E402
from ultralytics import YOLO  # noqa: E402

import attnkern  # noqa: E402
from attnkern import export  # noqa: E402
from attnkern.integrations import ultralytics as ak_yolo  # noqa: E402
from conftest import rel_error  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {p.stem: p for p in sorted((ROOT / "configs").glob("*.yaml"))}
IMGSZ = 64


@pytest.fixture(autouse=True)
def offline_ultralytics(monkeypatch, tmp_path):
    """register(); auto-install off even if another test imported Ultralytics first; files in tmp_path."""
    ak_yolo.register()
    monkeypatch.setattr(ultralytics.utils.checks, "AUTOINSTALL", False)
    monkeypatch.chdir(tmp_path)


def noise_image(path: Path, size=(IMGSZ, 80)) -> Path:
    from PIL import Image

    pixels = (torch.rand(*size, 3) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


def detections(model, x):
    """The detector's output [B, 4 + classes, anchors] (the model in eval mode)."""
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def _pythonpath():
    here = str(Path(attnkern.__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)


def run_elsewhere(code: str, *args, cwd: Path, without_attnkern: bool = False):
    """Runs code in a fresh interpreter; with ``without_attnkern`` any import of attnkern fails."""
    code = textwrap.dedent(code)
    if without_attnkern:
        code = "import sys\nsys.modules['attnkern'] = None  # any import of attnkern fails\n" + code
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "YOLO_CONFIG_DIR": str(cwd), "YOLO_OFFLINE": "1",
           "YOLO_AUTOINSTALL": "False", "MPLCONFIGDIR": str(cwd)}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=str(cwd), timeout=600)


# ---- ONNX ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ultralytics_onnx_export_and_predict(name, tmp_path):
    """export(format="onnx") with dynamic sizes: standard operators only; ONNX Runtime gives PyTorch's
    detections at the export size and at another batch and size; YOLO("….onnx").predict runs."""
    yolo = YOLO(str(CONFIGS[name]))
    path = Path(yolo.export(format="onnx", imgsz=IMGSZ, dynamic=True)).resolve()
    model = onnx.load(str(path))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert not any("attnkern" in n.op_type.lower() for n in model.graph.node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, IMGSZ, IMGSZ), (2, 3, 96, 64)]:
        x = torch.rand(shape)
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        want = detections(yolo.model.eval(), x)
        assert got.shape == want.shape and rel_error(got, want) <= 1e-4, (shape, rel_error(got, want))
    results = YOLO(str(path), task="detect").predict(str(noise_image(tmp_path / "img.png")), imgsz=IMGSZ,
                                                      verbose=False)
    assert len(results) == 1 and results[0].boxes is not None


# ---- TorchScript --------------------------------------------------------------------------------

PREDICT = """
import sys
{imports}
from ultralytics import YOLO
for path in sys.argv[2:]:
    results = YOLO(path, task="detect").predict(sys.argv[1], imgsz=64, device="cpu", verbose=False)
    assert len(results) == 1
print("attnkern imported:", sys.modules.get("attnkern") is not None)
"""


def test_ultralytics_torchscript_with_kernels_and_portable(tmp_path):
    """format="torchscript" records attnkern's ops: the file predicts where attnkern is imported first,
    and fails without it. Exported under attnkern.export.portable(), the files of all three configs
    predict in a process where attnkern cannot be imported."""
    image = noise_image(tmp_path / "img.png")
    kernels = Path(YOLO(str(CONFIGS["yolo11n-soca"])).export(format="torchscript", imgsz=IMGSZ)).resolve()
    failed = run_elsewhere(PREDICT.format(imports=""), image, kernels, cwd=tmp_path)
    assert failed.returncode != 0 and "attnkern::" in failed.stdout + failed.stderr
    ran = run_elsewhere(PREDICT.format(imports="import attnkern"), image, kernels, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]

    portable = []
    for name, cfg in CONFIGS.items():
        os.makedirs(tmp_path / name)
        os.chdir(tmp_path / name)
        with export.portable():
            portable.append(Path(YOLO(str(cfg)).export(format="torchscript", imgsz=IMGSZ)).resolve())
    ran = run_elsewhere(PREDICT.format(imports=""), image, *portable, cwd=tmp_path, without_attnkern=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "attnkern imported: False" in ran.stdout


# ---- torch.export ---------------------------------------------------------------------------------

@pytest.mark.parametrize("portable", [False, True], ids=["kernels", "portable"])
def test_torch_export_of_a_detector(portable):
    """torch.export of YOLO11n with SOCA: with the kernels (attnkern's ops, through their fake
    kernels) or portable; the exported program gives the model's detections."""
    model = YOLO(str(CONFIGS["yolo11n-soca"])).model.eval()
    with export.portable(portable):
        # a copy: Ultralytics' Detect head caches its anchors on the module while it is traced
        program = torch.export.export(copy.deepcopy(model), (torch.rand(2, 3, IMGSZ, IMGSZ),))
    in_graph = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("attnkern.") for t in in_graph) != portable
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    got, want = detections(program.module(), x), detections(model, x)
    assert got.shape == want.shape and got.shape[:2] == (2, 84)
    assert rel_error(got, want) <= 1e-5


# ---- multi-GPU training: the generated DDP worker ---------------------------------------------------

def synthetic_dataset(root: Path) -> Path:
    """Four 64×64 noise images with YOLO labels for train and val, and the dataset YAML."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for k in range(4):
            noise_image(root / "images" / split / f"{k}.png", (64, 64))
            (root / "labels" / split / f"{k}.txt").write_text(f"{k % 3} 0.5 0.5 0.4 0.3\n1 0.25 0.3 0.2 0.2\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {{0: a, 1: b, 2: c}}\n")
    return data


def test_ddp_worker_registers_attnkern(tmp_path):
    """The script Ultralytics writes for DDP workers rebuilds the trainer from its pickled class: with
    attnkern's DetectionTrainer (trainer=) the worker imports attnkern.integrations.ultralytics_trainers,
    which registers the layers. Run here with world size 1 on the CPU (torch.distributed.run, one
    process): it trains an epoch, and a callback in the worker sees register() in effect."""
    from ultralytics.utils.dist import ddp_cleanup, find_free_network_port, generate_ddp_file

    from attnkern.integrations.ultralytics_trainers import DetectionTrainer, trainer_for

    assert trainer_for("detect") is DetectionTrainer
    data = synthetic_dataset(tmp_path / "data")
    cfg = CONFIGS["yolo11n-soca"]
    trainer = DetectionTrainer(overrides=dict(
        model=str(cfg), data=str(data), epochs=1, imgsz=64, batch=2, workers=0, device="cpu", amp=False,
        plots=False, val=False, project=str(tmp_path / "runs"), name="ddp", exist_ok=True, verbose=False))
    trainer.model = trainer.get_model(cfg=str(cfg), verbose=False)  # what YOLO.train() does before launching
    marker = tmp_path / "worker.txt"

    def report(worker_trainer):  # pickled by value with the trainer's callbacks; runs in the worker
        from attnkern.integrations import ultralytics as integration

        marker.write_text(f"{integration.is_registered()} {type(worker_trainer).__module__}")

    trainer.add_callback("on_train_start", report)
    script = generate_ddp_file(trainer)
    try:
        text = Path(script).read_text()
        assert 'state["trainer"](' in text and "trainer.train()" in text
        state_file = Path(script).with_suffix(".pt")
        assert b"attnkern.integrations.ultralytics_trainers" in state_file.read_bytes()  # the class, by reference
        assert torch.load(state_file, weights_only=False)["trainer"] is DetectionTrainer

        env = {**os.environ, "PYTHONPATH": _pythonpath(), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False",
               "MPLCONFIGDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                              "--master_port", str(find_free_network_port()), script],
                             capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert marker.read_text() == "True attnkern.integrations.ultralytics_trainers"
        assert (tmp_path / "runs" / "ddp" / "weights" / "last.pt").is_file()
    finally:
        ddp_cleanup(trainer, script)
