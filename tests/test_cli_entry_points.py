"""Every command line: a console entry point in setup.py whose target answers --help, and scripts/*.py shims whose
--help needs no torch (the heavy imports come after the arguments are parsed)."""
import importlib
import re
import subprocess
import sys

import pytest

from dissect_helpers import REPO

SETUP = (REPO / "setup.py").read_text()
ENTRY_POINTS = dict(re.findall(r'"(kdfast-[a-z0-9-]+) = ([a-z0-9_.]+:[a-z_]+)"', SETUP))
# The argparse command lines (kdfast-info takes no arguments); each script calls the named entry point's target.
SCRIPTS = {
    "dissect": "kdfast-dissect", "study": "kdfast-study", "distill": "kdfast-distill",
    "evaluate": "kdfast-evaluate", "evaluate_e2kd": "kdfast-evaluate-e2kd", "distill_nlp": "kdfast-distill-nlp",
    "evaluate_nlp": "kdfast-evaluate-nlp", "make_synthetic_broden": "kdfast-make-synthetic-broden",
    "make_synthetic_shapes": "kdfast-make-synthetic-shapes", "make_synthetic_sst": "kdfast-make-synthetic-sst",
}


def test_every_script_has_an_entry_point_and_shims_it():
    assert set(SCRIPTS.values()) <= set(ENTRY_POINTS), set(SCRIPTS.values()) - set(ENTRY_POINTS)
    for script, name in SCRIPTS.items():
        module = ENTRY_POINTS[name].split(":")[0]
        assert f"from {module} import" in (REPO / "scripts" / f"{script}.py").read_text(), script


@pytest.mark.parametrize("name", sorted(n for n in SCRIPTS.values()))
def test_entry_point_target_answers_help(name, monkeypatch, capsys):
    module, function = ENTRY_POINTS[name].split(":")
    target = getattr(importlib.import_module(module), function)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        target()
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_script_help_imports_no_torch():
    """One interpreter runs each script's --help in turn and reports whether torch was imported by then."""
    order = sorted(SCRIPTS)
    code = ("import runpy, sys\n"
            "for script in %r:\n"
            "    sys.argv = [script, '--help']\n"
            "    try:\n        runpy.run_path('scripts/' + script + '.py', run_name='__main__')\n"
            "    except SystemExit:\n        pass\n"
            "    print('RESULT', script, 'torch' in sys.modules, file=sys.stderr)\n") % (order,)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    results = dict(line.split()[1:] for line in run.stderr.splitlines() if line.startswith("RESULT "))
    assert set(results) == set(order), run.stderr
    assert [script for script in order if results[script] == "True"] == [], run.stderr
