"""`python -m cgthub.devtools.layers`, as `make test` and a maintainer run it: the hub's imports
point down, and a tree with an upward import, a cycle or an unrooted exception fails, naming it."""

import subprocess
import sys
from pathlib import Path

from cgthub.devtools import layers

ROOT = Path(__file__).resolve().parent.parent


def run(root: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "cgthub.devtools.layers", *([str(root), "--no-known-upward"] if root else [])]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_the_hub_imports_point_down():
    done = run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imports point down" in done.stdout


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    base = {
        "cgthub/__init__.py": "",
        "cgthub/errors.py": "class CgthubError(Exception):\n    pass\n",
        "cgthub/model.py": "from cgthub.errors import CgthubError\n",
        "cgthub/pipeline.py": "from cgthub import model\n",
        "connectors/__init__.py": "",
        "connectors/crm/__init__.py": "from cgthub import pipeline\n",
    }
    for name, text in (base | files).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_clean_tree_passes_and_a_connector_may_import_the_core(tmp_path):
    done = run(_tree(tmp_path, {}))
    assert done.returncode == 0, done.stdout


def test_an_upward_import_fails_naming_file_line_and_rule(tmp_path):
    tree = _tree(
        tmp_path, {"cgthub/model.py": "from cgthub.errors import CgthubError\n\nfrom cgthub import pipeline\n"}
    )
    done = run(tree)
    assert done.returncode == 1
    assert (
        "cgthub/model.py:3: cgthub.model (model) imports cgthub.pipeline (pipeline): an import must not point up"
        in (done.stdout)
    )


def test_the_core_importing_a_connector_fails_even_inside_a_function(tmp_path):
    tree = _tree(tmp_path, {"cgthub/pipeline.py": "def pull():\n    from connectors.crm import sync\n"})
    done = run(tree)
    assert done.returncode == 1
    assert "cgthub/pipeline.py:2: cgthub.pipeline imports connectors.crm: the core never imports a connector" in (
        done.stdout
    )


def test_a_cycle_and_an_unrooted_exception_and_an_unplaced_module_fail(tmp_path):
    tree = _tree(
        tmp_path,
        {
            "cgthub/archive.py": "from cgthub import quarantine\n",
            "cgthub/quarantine.py": (
                "def put():\n    from cgthub import archive\n\n\nclass Stale(ValueError):\n    pass\n"
            ),
            "cgthub/brand_new.py": "",
        },
    )
    done = run(tree)
    assert done.returncode == 1
    assert "cgthub/archive.py:1: import cycle among cgthub.archive, cgthub.quarantine" in done.stdout
    assert "cgthub/quarantine.py:5: exception Stale derives from ValueError but not from" in done.stdout
    assert "cgthub.brand_new is in no layer" in done.stdout


def test_a_known_upward_import_is_debt_and_an_entry_no_longer_needed_fails(tmp_path):
    upward = _tree(tmp_path / "a", {"cgthub/services.py": "import connectors.crm\n"})
    known = [("cgthub/services.py", "connectors.crm")]
    failures, debt = layers.check(upward, known)
    assert failures == [] and [str(d) for d in debt] == [
        "cgthub/services.py:1: cgthub.services imports connectors.crm: the core never imports a connector"
    ]
    cleaned = _tree(tmp_path / "b", {"cgthub/services.py": ""})
    failures, debt = layers.check(cleaned, known)
    assert debt == [] and [f.rule for f in failures] == [
        "KNOWN_UPWARD names cgthub/services.py -> connectors.crm, which is gone: remove the entry"
    ]
