"""attnkern layers by name in Ultralytics model YAMLs (YOLOv8, YOLO11 and the other YAML-built models).

Usage::

    from attnkern.integrations.ultralytics import register
    register()                                  # once per process, before a model is built from a YAML

    from ultralytics import YOLO
    model = YOLO("configs/yolo11n-soca.yaml")   # a backbone row reads: - [-1, 1, SOCA, []]
    model.train(data="coco8.yaml", epochs=1)

Rows name an attnkern layer as they name an Ultralytics module, and are written as Ultralytics users
write them for its own modules:

- the input channel count is never written: it is taken from the layer's input (``ch[f]``), as for
  ``Conv``;
- a layer that changes the channel count takes the output count first, width-scaled by the model
  scale exactly as ``Conv``'s (``make_divisible(min(c2, max_channels) * width, 8)``), and the next
  layers see the new count;
- the layer's other constructor arguments follow in its own order, and a mapping at the end of the
  list gives keyword arguments; ``"nn.X"`` strings name ``torch.nn`` classes (a ``norm_layer``),
  ``nc`` the number of classes;
- ``repeats`` > 1 stacks the layer (depth-scaled), as Ultralytics does for ``Conv``.

::

    - [-1, 1, SOCA, []]                              # SOCA(c1)
    - [-1, 1, SOCA, [16]]                            # SOCA(c1, reduction=16)
    - [-1, 1, CrissCrossAttention, [2]]              # CrissCrossAttention(c1, recurrence=2)
    - [-1, 1, DRConv2d, [1024, 3, 8, {stride: 2}]]   # DRConv2d(c1, c2, 3, 8, stride=2, padding=1)
    - [-1, 1, attnkern.nn.CBAM, [16, 7]]             # the qualified name works too (see below)

``LAYERS`` says for each layer how its arguments are formed. A name there that ``attnkern.nn`` does
not have (an older attnkern) is skipped. A bare name that Ultralytics itself defines in
``ultralytics.nn.tasks`` keeps meaning Ultralytics' module, so existing YAMLs do not change meaning;
``attnkern.nn.NAME`` always means attnkern's layer.

DRConv2d rows get the padding ``dilation * (kernel_size // 2)`` unless they give one, as Ultralytics'
``Conv`` does (``DRConv2d``'s own default, 0, shrinks the map and breaks the feature pyramid's
concatenations).

Saved models: the built model holds the layers' own classes (``attnkern.nn.SOCA`` ...), so a
checkpoint written by ``model.save()``, the trainer or ``torch.save`` loads with ``YOLO("best.pt")``
wherever attnkern is installed, with no ``register()`` (unpickling imports attnkern). ``register()``
is needed where a model is built from a YAML, and training from a ``.pt`` does that (the trainer
rebuilds the model from the YAML stored in the checkpoint and loads the weights into it); with
``ULTRALYTICS_SAFE_LOAD=1`` (``weights_only`` loading) it also puts attnkern's layer classes on
torch's allow-list.

How it works: ``register()`` replaces ``ultralytics.nn.tasks.parse_model`` (the function every YAML
model is built by) with a wrapper; Ultralytics' files are not edited. ``parse_model`` injects
channels only for the modules it knows (an identity check against its own classes) and gives any
other module ``c2 = ch[f]``, so the wrapper lets the original do all of the channel bookkeeping on
stand-ins it knows, then puts the attnkern layers in their place:

1. for each attnkern row, in order, the original ``parse_model`` builds the model up to that row, with
   the row replaced by a probe ``Conv`` (``[c2, 1]`` for a layer that changes channels, else
   ``[8, 1]``) and the attnkern rows before it by their stand-ins: the probe's weight shape gives
   the input channels (and the width-scaled output channels), its length the depth-scaled repeats;
2. the original builds the whole model with every attnkern row replaced by its stand-in, a
   ``Conv [c2, 1]`` (the channels the layer outputs) or an ``nn.Identity`` (keeps the channels), so
   ``ch`` is right for every later layer, the ``Detect`` head included; the summary lines of those
   rows are rewritten to show the attnkern layer;
3. the stand-ins are replaced by the attnkern layers, built with the channels found, carrying the
   bookkeeping attributes Ultralytics reads (``i``, ``f``, ``type``, ``np``).
"""

from __future__ import annotations

import ast
import functools
import logging
import sys
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import attnkern.nn as _layers

__all__ = ["LayerSpec", "LAYERS", "register", "unregister", "is_registered", "available_layers"]


@dataclass(frozen=True)
class LayerSpec:
    """How a YAML row's arguments become a layer's constructor arguments.

    Attributes:
        channels: ``"keep"``: ``Layer(c1, *args)``, the output has the input's channels;
            ``"out"``: ``Layer(c1, c2, *args[1:])`` with ``c2`` = ``args[0]`` width-scaled;
            ``"none"``: ``Layer(*args)`` (the layer takes no channel argument, keeps the channels).
        optional_out: an ``"out"`` layer whose output count may be left out or null (it then keeps
            the channels and gets ``Layer(c1, *args)``).
        keep_flag: ``(position, name, default)`` of a flag argument (in the row, after the output
            count) under which an ``"out"`` layer keeps the channels: its first argument is then
            passed as written, not scaled.
        defaults: constructor arguments after the output count that a row may leave out.
        same_padding: the row gets ``padding = dilation * (kernel_size // 2)`` unless it gives one
            (``kernel_size`` is the argument after the output count).
    """

    channels: str = "keep"
    optional_out: bool = False
    keep_flag: Optional[Tuple[int, str, bool]] = None
    defaults: Tuple[Any, ...] = ()
    same_padding: bool = False


_KEEP = LayerSpec("keep")

#: name in ``attnkern.nn`` → how its row's arguments are formed. Names ``attnkern.nn`` lacks are skipped.
LAYERS: Dict[str, LayerSpec] = {
    "SOCA": _KEEP,  # [reduction=8]
    "CrissCrossAttention": _KEEP,  # [recurrence=1]
    "DRConv2d": LayerSpec("out", same_padding=True),  # [out_channels, kernel_size, region_num=8, {stride, padding, dilation}]
    "DoubleAttention": LayerSpec("out", keep_flag=(2, "reconstruct", True)),  # [c_m, c_n, reconstruct=True]
    "SEAttention": _KEEP,  # [reduction=16]
    "CBAM": _KEEP,  # [ratio=16, kernel_size=7]
    "SKConv": _KEEP,  # [M=3, G=1, r=4, stride=1, L=32]
    "SGE": LayerSpec("none"),  # [groups=64]
    "cSE": _KEEP,  # []
    "sSE": _KEEP,  # []
    "scSE": _KEEP,  # []
    # [planes, stride=1, padding=1, dilation=1, groups=1, pooling_r=4, norm_layer=nn.BatchNorm2d]
    "SCConv": LayerSpec("out", defaults=(1, 1, 1, 1, 4, nn.BatchNorm2d)),
    "SplitAttn": LayerSpec("out", optional_out=True),  # [out_channels=None, kernel_size=3, stride=1, ...]
}

_QUALIFIED = "attnkern.nn."
_MARK = "_attnkern_original"  # attribute of the wrapper: the parse_model it wraps


def available_layers() -> Dict[str, type]:
    """The layers of ``LAYERS`` this attnkern has: name → class."""
    found = {}
    for name in LAYERS:
        cls = getattr(_layers, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            found[name] = cls
    return found


def _resolve(module_name: Any, tasks_namespace: Dict[str, Any]) -> Optional[Tuple[str, type, LayerSpec]]:
    """The attnkern layer a row's module name means, or None when the row is not attnkern's."""
    if not isinstance(module_name, str):
        return None
    qualified = module_name.startswith(_QUALIFIED)
    name = module_name[len(_QUALIFIED):] if qualified else module_name
    spec = LAYERS.get(name)
    cls = getattr(_layers, name, None) if spec is not None else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        if qualified:
            raise KeyError(f"{module_name}: no such layer in this attnkern (layers usable in Ultralytics YAMLs: "
                           f"{', '.join(sorted(available_layers()))})")
        return None
    if not qualified and name in tasks_namespace:
        return None  # Ultralytics' own module of that name: its meaning stays
    return name, cls, spec


def _literal(value: Any, nc: Any) -> Any:
    """A row argument as parse_model reads it (strings: ``nc``, ``nn.X`` classes, Python literals)."""
    if not isinstance(value, str):
        return value
    if value == "nc":
        return nc
    for prefix in ("torch.nn.", "nn."):
        if value.startswith(prefix):
            obj = getattr(torch.nn, value[len(prefix):], None)
            if obj is not None:
                return obj
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _same_padding(kernel_size: Any, dilation: Any) -> Any:
    if isinstance(kernel_size, int) and isinstance(dilation, int):
        return dilation * (kernel_size // 2)
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    ds = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    return tuple(d * (k // 2) for k, d in zip(ks, ds))


class _Row:
    """One attnkern row of a model YAML: its arguments, and the channels parse_model gives it."""

    def __init__(self, index: int, row: List[Any], name: str, cls: type, spec: LayerSpec, nc: Any):
        self.index, self.name, self.cls, self.spec = index, name, cls, spec
        self.f, self.n = row[0], row[1]
        where = f"model YAML row {index} ({row[2]})"
        if not isinstance(self.f, int):
            raise ValueError(f"{where}: an attnkern layer takes one input; 'from' must be one index, got {self.f!r}")
        args = row[3] if len(row) > 3 and row[3] is not None else []
        if not isinstance(args, (list, tuple)):
            raise TypeError(f"{where}: args must be a list, got {args!r}")
        args = [_literal(a, nc) for a in args]
        self.kwargs: Dict[str, Any] = {}
        if args and isinstance(args[-1], dict):
            self.kwargs = {str(k): _literal(v, nc) for k, v in args.pop().items()}
        self.args = args
        if spec.channels not in ("keep", "out", "none"):
            raise ValueError(f"LAYERS[{name!r}]: unknown channels rule {spec.channels!r}")
        self.out: Optional[int] = None  # the row's output channel count before width scaling; None: keeps
        if spec.channels == "out" and not self._keeps(spec, args, self.kwargs):
            if not args or isinstance(args[0], bool) or not isinstance(args[0], int) or args[0] < 1:
                raise ValueError(f"{where}: {name} changes the channel count; its args start with the output "
                                 f"channels (as Conv's), got {row[3] if len(row) > 3 else []!r}")
            self.out = args[0]
        self.where = where
        self.c1 = self.c2 = self.repeats = None

    @staticmethod
    def _keeps(spec: LayerSpec, args: List[Any], kwargs: Dict[str, Any]) -> bool:
        if spec.keep_flag is not None:
            position, key, default = spec.keep_flag
            flag = kwargs[key] if key in kwargs else args[position] if len(args) > position else default
            if flag:
                return True
        return spec.optional_out and (not args or args[0] is None)

    def stand_in(self, probe: bool = False) -> List[Any]:
        """A row parse_model knows with this row's channel behaviour (a probe: a Conv that shows c1)."""
        if probe or self.out is not None:
            return [self.f, self.n, "Conv", [self.out if self.out is not None else 8, 1]]
        return [self.f, self.n, "nn.Identity", []]

    def constructor_args(self, c1: int) -> Tuple[List[Any], Dict[str, Any]]:
        spec, kwargs = self.spec, dict(self.kwargs)
        if spec.channels == "none":
            return list(self.args), kwargs
        if self.out is None:
            return [c1, *self.args], kwargs
        rest = list(self.args[1:])
        if len(rest) < len(spec.defaults):
            rest += list(spec.defaults[len(rest):])
        if spec.same_padding and "padding" not in kwargs and rest:
            kwargs["padding"] = _same_padding(rest[0], kwargs.get("dilation", 1))
        return [c1, self.c2, *rest], kwargs

    def build(self) -> nn.Module:
        layers = []
        for k in range(self.repeats):
            args, kwargs = self.constructor_args(self.c1 if k == 0 else self.c2)
            try:
                layers.append(self.cls(*args, **kwargs))
            except Exception as e:
                if hasattr(e, "add_note"):  # Python 3.11+
                    e.add_note(f"while building {self.where} as {self.name}(*{args}, **{kwargs})")
                raise
        return layers[0] if self.repeats == 1 else nn.Sequential(*layers)

    def summary_args(self) -> List[Any]:
        args, kwargs = self.constructor_args(self.c1)
        return [*args, kwargs] if kwargs else args


def _first_conv(module: nn.Module) -> nn.Conv2d:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise RuntimeError(f"attnkern: the channel probe built {type(module).__name__} without a Conv2d "
                       "(this Ultralytics version's Conv is not what attnkern.integrations.ultralytics expects)")


def _model_dict(d: Dict[str, Any], rows: List[List[Any]]) -> Dict[str, Any]:
    """d with its layers replaced by rows (all under 'backbone': parse_model reads backbone + head)."""
    out = {k: v for k, v in d.items() if k not in ("backbone", "head")}
    out["backbone"], out["head"] = deepcopy(rows), []
    if out.get("scales") and not out.get("scale"):
        out["scale"] = next(iter(out["scales"]))  # what parse_model assumes, without its warning per pass
    return out


class _SummaryRows(logging.Filter):
    """Rewrites parse_model's summary line of each stand-in row to show the attnkern layer."""

    def __init__(self, lines: Dict[int, Tuple[str, str]]):
        super().__init__()
        self.lines = lines  # row index → (line prefix parse_model writes, line to write instead)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        head = message.lstrip()[:8].split(" ", 1)[0]
        if head.isdigit() and int(head) in self.lines:
            prefix, line = self.lines[int(head)]
            if message.startswith(prefix):
                record.msg, record.args = line, ()
        return True


def _summary_line(i: int, f: Any, n: int, np_: int, t: str, args: Any) -> str:
    # parse_model's own format for a summary row
    return f"{i:>3}{f!s:>20}{n:>3}{np_:10.0f}  {t:<45}{args!s:<30}"


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _wrap(original: Callable, tasks: Any) -> Callable:
    @functools.wraps(original)
    def parse_model(d, ch, *args, **kwargs):
        layers = list(d.get("backbone") or []) + list(d.get("head") or [])
        namespace = vars(tasks)
        rows: Dict[int, _Row] = {}
        for i, row in enumerate(layers):
            hit = _resolve(row[2], namespace) if isinstance(row, (list, tuple)) and len(row) >= 3 else None
            if hit is not None:
                rows[i] = _Row(i, list(row), *hit, nc=d.get("nc"))
        if not rows:
            return original(d, ch, *args, **kwargs)

        # 1. channels and repeats of each attnkern row, from a probe Conv built by the original
        for i in sorted(rows):
            row = rows[i]
            prefix = [rows[j].stand_in() if j in rows else layers[j] for j in range(i)]
            built = original(_model_dict(d, prefix + [row.stand_in(probe=True)]), ch, verbose=False)[0]
            probe = built[i]
            row.repeats = len(probe) if type(probe) is nn.Sequential else 1
            conv = _first_conv(probe)
            row.c1 = conv.in_channels
            row.c2 = conv.out_channels if row.out is not None else row.c1

        # 2. the whole model with stand-ins (ch right for every later row), summary lines rewritten
        modules = {i: row.build() for i, row in rows.items()}
        lines = {}
        for i, row in rows.items():
            n_params = sum(p.numel() for p in modules[i].parameters())
            lines[i] = (f"{i:>3}{row.f!s:>20}",
                        _summary_line(i, row.f, row.repeats, n_params, _type_name(row.cls), row.summary_args()))
        final = dict(d)
        final["backbone"] = [rows[j].stand_in() if j in rows else layers[j] for j in range(len(d.get("backbone") or []))]
        final["head"] = [rows[j].stand_in() if j in rows else layers[j] for j in range(len(final["backbone"]), len(layers))]
        logger = getattr(tasks, "LOGGER", None)
        summary = _SummaryRows(lines)
        if isinstance(logger, logging.Logger):
            logger.addFilter(summary)
        try:
            result = original(final, ch, *args, **kwargs)
        finally:
            if isinstance(logger, logging.Logger):
                logger.removeFilter(summary)

        # 3. the attnkern layers in place of the stand-ins
        model = result[0]
        for i, row in rows.items():
            old, new = model[i], modules[i]
            got = len(old) if type(old) is nn.Sequential else 1
            if got != row.repeats:
                raise RuntimeError(f"{row.where}: the stand-in was built {got}× but the probe {row.repeats}×")
            for attr in ("i", "f"):
                if hasattr(old, attr):
                    setattr(new, attr, getattr(old, attr))
            new.type = _type_name(row.cls)
            new.np = sum(p.numel() for p in new.parameters())
            model[i] = new
        return result

    setattr(parse_model, _MARK, original)
    return parse_model


def _layer_classes() -> List[type]:
    """Every nn.Module class defined in attnkern.nn's modules (the layers and their parts)."""
    classes = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "attnkern.nn" or name.startswith("attnkern.nn.")):
            continue
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__.startswith("attnkern.") \
                    and obj not in classes:
                classes.append(obj)
    return classes


def register(safe_globals: bool = True) -> None:
    """Make attnkern's layers (``LAYERS``) usable by name in Ultralytics model YAMLs.

    Replaces ``ultralytics.nn.tasks.parse_model`` (and its ``ultralytics.nn`` re-export) with a wrapper
    that builds the attnkern rows and leaves every other row to the original. Calling it again does
    nothing; ``unregister()`` undoes it.

    Args:
        safe_globals: also allow attnkern's layer classes in ``torch.load(weights_only=True)``
            (``torch.serialization.add_safe_globals``), so checkpoints holding them load under
            Ultralytics' ``ULTRALYTICS_SAFE_LOAD=1``.
    """
    try:
        import ultralytics.nn as unn
        import ultralytics.nn.tasks as tasks
    except ImportError as e:
        raise ImportError("attnkern.integrations.ultralytics.register() needs the ultralytics package: "
                          "pip install ultralytics (or attnkern's 'yolo' extra)") from e

    current = tasks.parse_model
    if getattr(current, _MARK, None) is None:
        wrapped = _wrap(current, tasks)
        tasks.parse_model = wrapped
        if getattr(unn, "parse_model", None) is current:
            unn.parse_model = wrapped
    if safe_globals and hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(_layer_classes())


def unregister() -> None:
    """Undo ``register()`` (the weights_only allow-list stays: torch has no removal for it)."""
    import ultralytics.nn as unn
    import ultralytics.nn.tasks as tasks

    current = tasks.parse_model
    original = getattr(current, _MARK, None)
    if original is None:
        return
    tasks.parse_model = original
    if getattr(unn, "parse_model", None) is current:
        unn.parse_model = original


def is_registered() -> bool:
    """Whether ``register()`` is in effect."""
    import ultralytics.nn.tasks as tasks

    return getattr(tasks.parse_model, _MARK, None) is not None
