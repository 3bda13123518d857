"""attnkern layers in Ultralytics YOLO models built from the YAMLs in configs/ (attnkern.integrations.ultralytics).

Each example YAML builds, runs the detection loss forward and backward on a small synthetic batch with
finite, non-zero gradients in its attnkern layer, and survives a save and a reload through
Ultralytics' own loader; a YOLO11n with SOCA at P5 takes an optimizer step. Needs the ``ultralytics``
package (the ``yolo``/``test`` extras); skipped without it.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from copy import deepcopy
from pathlib import Path

import pytest
import torch

# Ultralytics reads these at import: keep its settings file in a temporary folder and make it offline
# (no downloads, no online checks) before it is imported.
_CONFIG_DIR = tempfile.mkdtemp(prefix="attnkern-yolo-settings-")
atexit.register(shutil.rmtree, _CONFIG_DIR, ignore_errors=True)
os.environ.setdefault("YOLO_CONFIG_DIR", _CONFIG_DIR)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

pytest.importorskip("ultralytics")

import ultralytics.nn.tasks as tasks  # noqa: E402
from torch import nn  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, torch_safe_load  # noqa: E402

import attnkern.nn  # noqa: E402
from attnkern.integrations import ultralytics as ak_yolo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
NC = 3
IMGSZ = 64

# What each shipped YAML puts where: row index → (layer class, input channels, output channels) at
# its scale. A YAML not listed here is still built and trained; its attnkern layers are found by type.
EXPECTED = {
    "yolo11n-soca.yaml": {9: (attnkern.nn.SOCA, 256, 256)},
    "yolov8n-crisscross.yaml": {10: (attnkern.nn.CrissCrossAttention, 256, 256)},
    "yolo11n-drconv.yaml": {7: (attnkern.nn.DRConv2d, 128, 256)},  # Conv's [1024, 3, 2] → 128 → 256 at n
}


@pytest.fixture(scope="module", autouse=True)
def registered():
    ak_yolo.register()
    yield


def attnkern_rows(model):
    """Row index → row module of every attnkern layer (or stack of them) in a YOLO model."""
    def is_ours(m):
        return type(m).__module__.startswith("attnkern.")

    return {i: m for i, m in enumerate(model.model)
            if is_ours(m) or (type(m) is nn.Sequential and len(m) and all(is_ours(x) for x in m))}


def synthetic_batch(batch_size=2, imgsz=IMGSZ, seed=0):
    """A detection batch as Ultralytics' trainer hands it to the loss: normalised xywh boxes."""
    g = torch.Generator().manual_seed(seed)
    n = 3  # boxes per image
    xy = 0.25 + 0.5 * torch.rand(batch_size * n, 2, generator=g)
    wh = 0.1 + 0.3 * torch.rand(batch_size * n, 2, generator=g)
    return {
        "img": torch.rand(batch_size, 3, imgsz, imgsz, generator=g),
        "cls": torch.randint(0, NC, (batch_size * n, 1), generator=g).float(),
        "bboxes": torch.cat([xy, wh], 1),
        "batch_idx": torch.arange(batch_size).repeat_interleave(n).float(),
    }


def build(cfg):
    model = DetectionModel(str(cfg), ch=3, nc=NC, verbose=False)
    model.args = get_cfg()  # the loss's hyperparameters (box, cls, dfl gains), as the trainer sets them
    return model


def total_loss(model, batch):
    loss, _ = model.loss(batch)
    return loss.sum()


def channels_seen(layer, x_model, model):
    """Input and output channel counts of `layer` during a forward of `model` on x_model."""
    seen = {}
    hook = layer.register_forward_hook(lambda m, args, out: seen.update(c1=args[0].shape[1], c2=out.shape[1]))
    try:
        with torch.no_grad():
            model.eval()(x_model)
    finally:
        hook.remove()
    return seen["c1"], seen["c2"]


def test_register_is_idempotent_and_reversible():
    ak_yolo.register()
    ak_yolo.register()
    wrapped = tasks.parse_model
    assert ak_yolo.is_registered()
    original = wrapped.__wrapped__
    assert getattr(original, "__wrapped__", None) is None, "register() twice must not wrap twice"
    ak_yolo.unregister()
    assert tasks.parse_model is original and not ak_yolo.is_registered()
    ak_yolo.register()
    assert ak_yolo.is_registered()


def test_every_shipped_yaml_has_expectations():
    assert {p.name for p in CONFIGS} >= set(EXPECTED), "configs/ lacks an example YAML this test expects"


@pytest.mark.parametrize("cfg", CONFIGS, ids=[p.name for p in CONFIGS])
def test_yaml_builds_trains_saves_and_reloads(cfg, tmp_path):
    model = build(cfg)
    rows = attnkern_rows(model)
    assert rows, f"{cfg.name}: no attnkern layer in the built model"
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    for i, (cls, c1, c2) in EXPECTED.get(cfg.name, {}).items():
        layer = model.model[i]
        assert type(layer) is cls, f"row {i} is {type(layer).__name__}, expected {cls.__name__}"
        assert layer.type == f"{cls.__module__}.{cls.__qualname__}" and layer.i == i
        assert channels_seen(layer, x, model) == (c1, c2)

    # detection loss forward and backward on a synthetic batch
    model.train()
    loss = total_loss(model, synthetic_batch())
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for i, row in rows.items():
        grads = [p.grad for p in row.parameters()]
        assert grads and all(g is not None for g in grads), f"row {i}: a parameter got no gradient"
        assert all(torch.isfinite(g).all() for g in grads), f"row {i}: non-finite gradient"
        assert sum(g.abs().sum() for g in grads) > 0, f"row {i}: all gradients are zero"

    # save and reload with Ultralytics' loader; the same eval output as the model saved (in fp16)
    yolo = YOLO(str(cfg), verbose=False)
    yolo.model = model  # the model above (nc = NC, batch-norm statistics moved by the training forward)
    path = tmp_path / f"{cfg.stem}.pt"
    yolo.save(path)
    reloaded = YOLO(str(path), verbose=False).model
    assert set(attnkern_rows(reloaded)) == set(rows)
    for i, row in attnkern_rows(reloaded).items():
        assert type(row) is type(rows[i])
    expected = deepcopy(model).half().float().eval()
    x = synthetic_batch(1, seed=1)["img"]
    with torch.no_grad():
        want, got = expected(x), reloaded.float().eval()(x)
    want, got = (t[0] if isinstance(t, (tuple, list)) else t for t in (want, got))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_yolo11n_soca_trains_one_step():
    model = build(ROOT / "configs" / "yolo11n-soca.yaml")
    soca = model.model[9]
    assert type(soca) is attnkern.nn.SOCA
    before = {k: v.clone() for k, v in soca.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    batch = synthetic_batch(seed=2)
    losses = []
    for _ in range(2):
        optimizer.zero_grad()
        loss = total_loss(model, batch)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in soca.state_dict().items()), "SOCA's weights did not move"


TRAIN_SCRIPT = """
import sys
import torch
from attnkern.integrations.ultralytics import register
register()
from ultralytics import YOLO
model = YOLO(sys.argv[1])
model.train(data=sys.argv[2], epochs=1, imgsz=64, batch=2, workers=0, device="cpu", amp=False, plots=False,
            val=False, project=sys.argv[3], name="run", exist_ok=True, verbose=False)
loss = model.trainer.tloss  # the epoch's mean losses (a tensor, or a dict of them)
values = list(loss.values()) if isinstance(loss, dict) else [loss]
assert values and all(torch.isfinite(torch.as_tensor(v)).all() for v in values), loss
print("LAST", model.trainer.last)
"""

LOAD_SCRIPT = """
import sys
from ultralytics import YOLO
model = YOLO(sys.argv[1])
results = model.predict(sys.argv[2], imgsz=64, device="cpu", verbose=False)
assert len(results) == 1
assert not any(name.startswith("attnkern.integrations") for name in sys.modules)
print("LAYER", type(model.model.model[9]).__module__, type(model.model.model[9]).__name__)
"""


def _run(script, *args, cwd):
    here = str(Path(attnkern.__file__).resolve().parents[1])  # the same attnkern as this process's
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "YOLO_CONFIG_DIR": str(cwd), "YOLO_OFFLINE": "1", "MPLCONFIGDIR": str(cwd),
           "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def synthetic_dataset(root: Path) -> Path:
    """Four 64×64 noise images with YOLO labels, for train and val, and the dataset YAML."""
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for k in range(4):
            pixels = (torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "images" / split / f"{k}.png")
            (root / "labels" / split / f"{k}.txt").write_text(f"{k % NC} 0.5 0.5 0.4 0.3\n1 0.25 0.3 0.2 0.2\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {{0: a, 1: b, 2: c}}\n")
    return data


def test_ultralytics_trainer_and_reload_without_register(tmp_path):
    """YOLO(yaml).train() with Ultralytics' own trainer (it rebuilds the model from the YAML) on a
    synthetic dataset; then, in a fresh process with no register(), YOLO(last.pt) loads and predicts:
    unpickling imports attnkern by itself. Separate processes keep the trainer's global settings
    (threads, determinism) out of the other tests."""
    data = synthetic_dataset(tmp_path / "data")
    out = _run(TRAIN_SCRIPT, ROOT / "configs" / "yolo11n-soca.yaml", data, tmp_path / "runs", cwd=tmp_path)
    last = Path(out.split("LAST")[-1].split()[0])
    assert last.is_file()
    out = _run(LOAD_SCRIPT, last, tmp_path / "data" / "images" / "val" / "0.png", cwd=tmp_path)
    assert out.split("LAYER")[-1].split() == ["attnkern.nn.covpool", "SOCA"]


def test_weights_only_load(tmp_path):
    """Under Ultralytics' restricted (weights_only) loading, register() has put attnkern's classes on
    torch's allow-list."""
    path = tmp_path / "soca.pt"
    YOLO(str(ROOT / "configs" / "yolo11n-soca.yaml"), verbose=False).save(path)
    ckpt, _ = torch_safe_load(str(path), safe_only=True)
    assert type(ckpt["model"].model[9]) is attnkern.nn.SOCA


# --- the argument rules of LAYERS, on stand-in classes for the layers attnkern.nn may not have yet ---

class _Recorder(nn.Module):
    """Records its constructor arguments; keeps the channels (the tests below only build)."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs = args, kwargs


def _standins(monkeypatch, names):
    fakes = {name: type(name, (_Recorder,), {}) for name in names}
    for name, cls in fakes.items():
        monkeypatch.setattr(attnkern.nn, name, cls, raising=False)
    return fakes


def test_table_rules(monkeypatch):
    _standins(monkeypatch, ["SEAttention", "SplitAttn", "SGE", "DoubleAttention", "SCConv"])
    d = {
        "nc": 2, "scales": {"n": [0.5, 0.25, 1024]}, "scale": "n",
        "backbone": [
            [-1, 1, "Conv", [64, 3, 2]],  # 0: 16
            [-1, 1, "SEAttention", [4]],  # 1: keeps 16
            [-1, 1, "SplitAttn", [128, 3]],  # 2: 16 → 32
            [-1, 1, "SplitAttn", []],  # 3: keeps 32
            [-1, 1, "SGE", [8]],  # 4: no channel argument, keeps 32
            [-1, 1, "DoubleAttention", [64, 16, False]],  # 5: 32 → 16 (c_m is the output)
            [-1, 1, "DoubleAttention", [64, 16]],  # 6: keeps 16 (reconstruct), c_m as written
            [0, 1, "SOCA", []],  # 7: from row 0: 16
            [-1, 4, "attnkern.nn.SOCA", [4]],  # 8: qualified name, 4 × 0.5 = 2 repeats
            [[-1, 6], 1, "Concat", [1]],  # 9: 32
            [-1, 1, "SCConv", [64, 2]],  # 10: 32 → 16, defaults after stride
            [-1, 1, "DRConv2d", [32, 3, 4, {"dilation": 2}]],  # 11: 16 → 8, padding = 2
            [-1, 1, "Conv", [64, 1]],  # 12: in 8
        ],
        "head": [],
    }
    model, _ = tasks.parse_model(deepcopy(d), ch=3, verbose=False)
    assert model[1].args == (16, 4)
    assert model[2].args == (16, 32, 3)
    assert model[3].args == (32,)
    assert model[4].args == (8,)
    assert model[5].args == (32, 16, 16, False)
    assert model[6].args == (16, 64, 16)
    assert model[7].conv_du[0].in_channels == 16
    assert type(model[8]) is nn.Sequential and len(model[8]) == 2
    assert all(type(m) is attnkern.nn.SOCA and m.conv_du[0].in_channels == 16 for m in model[8])
    assert model[10].args == (32, 16, 2, 1, 1, 1, 4, nn.BatchNorm2d)
    drconv = model[11]
    assert (drconv.in_channels, drconv.out_channels, drconv.region_num) == (16, 8, 4)
    assert drconv.kwargs == {"dilation": 2, "padding": 2}
    assert model[12].conv.in_channels == 8
    assert [m.i for m in model] == list(range(len(model)))
    assert model[9].f == [-1, 6] and model[7].f == 0


def test_ultralytics_names_keep_their_meaning(monkeypatch):
    """A LAYERS name that Ultralytics defines itself stays Ultralytics' module; the qualified name is ours."""
    (fake,) = _standins(monkeypatch, ["Conv"]).values()
    monkeypatch.setitem(ak_yolo.LAYERS, "Conv", ak_yolo.LayerSpec("keep"))
    d = {"nc": 2, "backbone": [[-1, 1, "Conv", [8, 3]], [-1, 1, "attnkern.nn.Conv", [5]]], "head": []}
    model, _ = tasks.parse_model(d, ch=3, verbose=False)
    assert type(model[0]) is tasks.Conv and type(model[1]) is fake and model[1].args == (8, 5)


def test_bad_rows():
    base = {"nc": 2, "head": []}
    with pytest.raises(ValueError, match=r"row 1 \(DRConv2d\).*output channels"):
        tasks.parse_model({**base, "backbone": [[-1, 1, "Conv", [8, 3]], [-1, 1, "DRConv2d", []]]}, ch=3,
                          verbose=False)
    with pytest.raises(ValueError, match="one input"):
        tasks.parse_model({**base, "backbone": [[-1, 1, "Conv", [8, 3]], [[-1, 0], 1, "SOCA", []]]}, ch=3,
                          verbose=False)
    with pytest.raises(KeyError, match="no such layer"):
        tasks.parse_model({**base, "backbone": [[-1, 1, "attnkern.nn.NoSuchLayer", []]]}, ch=3, verbose=False)
