"""Import hook that lets PyPI's torchvision import beside the CPU build of torch.

Why: on CPU machines we install torch==2.13.0+cpu (a local wheel) and PyPI's torchvision 0.28.0,
which is built against CUDA torch. Its C extension fails to load there, and
``torchvision/_meta_registrations.py`` then dies with ``operator torchvision::nms does not exist``,
which also breaks ``import open_clip`` and parts of transformers. After ``torchvision.extension``
has tried (and failed) to load its ops, we define the two operator *schemas* that the meta
registrations need. Transforms, models and box ops work; ``torchvision.ops.nms`` and
``torchvision.io.decode_jpeg`` still raise (the project decodes images with Pillow).

Installed by scripts/install.sh as a ``.pth`` file on CPU-only machines, so it is active in every
interpreter of the venv (vLLM, Beam and Dagster start child processes). GPU installs skip it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "torchvision.extension"
_LIBS: list = []  # keep the torch.library.Library objects alive


def _define_missing_schemas() -> None:
    ext = sys.modules.get(_TARGET)
    if ext is None or ext._has_ops():
        return
    import torch

    lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - schema-only definitions
    for name in ("nms", "qnms"):
        lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec):  # noqa: ANN001
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001
        self._inner.exec_module(module)
        try:
            _define_missing_schemas()
        except Exception:  # never break the import of torchvision itself
            pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: ANN001
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
