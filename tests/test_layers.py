"""The library's layers (scripts/import_layers.py): no module imports from a higher layer, and the
checker itself catches an upward import."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("import_layers", ROOT / "scripts" / "import_layers.py")
layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layers)


def test_no_module_imports_a_higher_layer():
    graph = layers.import_graph(ROOT / "cmrl")
    assert layers.violations(graph) == []
    assert {"cmrl.nets.modular_net", "cmrl.algo.trainer", "cmrl.data.loading"} <= set(graph)


def test_every_module_has_a_layer():
    for m in layers.import_graph(ROOT / "cmrl"):
        layers.group(m)


def test_checker_sees_upward_and_peer_imports(tmp_path):
    pkg = tmp_path / "cmrl"
    for rel, text in {"__init__.py": "", "config.py": "from .algo import sac\n",
                      "nets/__init__.py": "", "nets/layers.py": "from ..envs.tasks import X\n",
                      "envs/__init__.py": "", "envs/tasks.py": "X = 1\n",
                      "algo/__init__.py": "", "algo/sac.py": "from ..nets import layers\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    bad = layers.violations(layers.import_graph(pkg))
    assert bad == ["cmrl.config (layer 0) imports cmrl.algo.sac (layer 3)",
                   "cmrl.nets.layers (layer 1) imports cmrl.envs.tasks (layer 1)"]
    with pytest.raises(KeyError, match="no layer"):
        layers.group("cmrl.newpkg.thing")


def test_the_library_never_imports_gradio():
    import ast

    for path in (ROOT / "cmrl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("gradio", "gradio_client", "app") for n in names), path
