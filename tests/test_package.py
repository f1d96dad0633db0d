"""Packaging and first-use behaviour: submodules are never hidden by package attributes, the extension loader
needs no prior `import torch` and retries after a failure."""
import importlib
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import kdfast

ROOT = Path(__file__).resolve().parents[1]


def test_no_package_attribute_hides_a_submodule():
    hidden = []
    for info in pkgutil.walk_packages(kdfast.__path__, "kdfast."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        for sub in pkgutil.iter_modules(package.__path__):
            if sub.name.startswith("_"):
                continue
            attribute = getattr(package, sub.name, None)
            if attribute is not None and not isinstance(attribute, types.ModuleType):
                hidden.append(f"{info.name}.{sub.name} is a {type(attribute).__name__}")
    assert not hidden, hidden
    import kdfast.ops.kd_explain_loss as module

    assert isinstance(module, types.ModuleType) and callable(module.kd_explain_loss)


def test_extension_available_before_torch_is_imported():
    # A fresh interpreter that has not imported torch: available() must import it and find kdfast._C.
    code = "import sys; from kdfast import _extension; ok = _extension.available(); print(ok, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"], out


def test_extension_load_failure_is_not_cached(monkeypatch):
    from kdfast import _extension

    real = importlib.import_module
    monkeypatch.setattr(_extension, "_C", None)
    monkeypatch.setattr(_extension.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError("gone")))
    assert not _extension.available()
    monkeypatch.setattr(_extension.importlib, "import_module", real)
    assert _extension.available()
