"""The repository as a ComfyUI node pack, checked without ComfyUI: the registry's metadata, the
requirements the nodes' imports need, a help page per node, the example workflows ComfyUI lists as
templates, and the root entry's behaviour outside ComfyUI. (Loading the pack in ComfyUI's server:
tests/comfyui_cases/realckpt.py.)"""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODES = os.path.join(ROOT, "src", "windowguide", "comfyui", "nodes.py")


def node_ids() -> list[str]:
    return re.findall(r'node_id="([A-Za-z0-9]+)"', open(NODES).read())


def test_the_registry_metadata_is_complete():
    tomllib = pytest.importorskip("tomllib")               # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"]
    repo = project["project"]["urls"]["Repository"].replace("https://github.com/", "")
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert comfy["Icon"].startswith(prefix)
    assert os.path.isfile(os.path.join(ROOT, comfy["Icon"][len(prefix):]))      # the icon ships in the repository
    assert "comfyui/web/docs/*.md" in project["tool"]["setuptools"]["package-data"]["windowguide"]


def test_requirements_cover_what_the_nodes_import():
    """Every third-party module the nodes' code imports (ComfyUI brings torch) is in requirements.txt."""
    code = ("import sys; before = set(sys.modules)\n"
            "import windowguide.integrations.comfyui, windowguide.integrations.comfyplace, windowguide.fusion\n"
            "import windowguide.adapters.vae_tiling, windowguide.adapters.sdxl, windowguide.spec, windowguide.guidance\n"
            "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
            "print(' '.join(sorted(n for n in new if not n.startswith('_') and n not in sys.stdlib_module_names)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    imported = set(out.stdout.split()) - {"torch", "torchgen", "typing_extensions", "windowguide"}
    required = {re.split(r"[<>=! ]", line.strip())[0].lower() for line in open(os.path.join(ROOT, "requirements.txt"))
                if line.strip() and not line.startswith("#")}
    assert imported and imported <= required, imported - required


def test_every_node_has_a_help_page_and_tooltips():
    ids = node_ids()
    assert len(ids) >= 8
    docs = os.path.join(ROOT, "src", "windowguide", "comfyui", "web", "docs")
    for node in ids:
        page = os.path.join(docs, f"{node}.md")
        assert os.path.isfile(page), node
        assert open(page).read().startswith("# "), node
    import ast
    widgets = [c for c in ast.walk(ast.parse(open(NODES).read())) if isinstance(c, ast.Call)
               and isinstance(c.func, ast.Attribute) and c.func.attr == "Input"
               and isinstance(c.func.value, ast.Attribute) and c.func.value.attr in ("Float", "Int", "Boolean", "Combo",
                                                                                    "String")]
    untipped = [ast.literal_eval(c.args[0]) for c in widgets if not any(k.arg == "tooltip" for k in c.keywords)]
    assert len(widgets) > 20 and not untipped, untipped


def test_the_example_workflows_are_templates_in_the_editors_format():
    sys.path.insert(0, os.path.join(ROOT, "examples", "comfyui"))
    try:
        import make_workflows
    finally:
        sys.path.pop(0)
    for name, make in make_workflows.WORKFLOWS.items():
        with open(os.path.join(ROOT, "example_workflows", f"windowguide_{name}.json")) as f:
            assert json.load(f) == json.loads(json.dumps(make_workflows.ui_format(make()))), name
    up = make_workflows.WORKFLOWS["upscale_2x"]()
    kinds = {n["class_type"] for n in up.values()}
    assert {"WindowguideFusionSampler", "WindowguideSlidingWindowGuidance", "ControlNetApplyAdvanced",
            "ConditioningSetArea", "WindowguideVAEEncodeTiled", "WindowguideVAEDecodeTiled"} <= kinds
    assert up["13"]["inputs"]["vcf"] and up["13"]["inputs"]["mode"] == "gf"


def test_the_root_entry_does_nothing_outside_comfyui():
    """A test runner or tool that imports the repository's root as a package gets an empty module, not
    an ImportError for ComfyUI's modules."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('pack', {os.path.join(ROOT, '__init__.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(hasattr(m, 'comfy_entrypoint'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_readme_install_text_names_what_exists():
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("### ComfyUI nodes"):]
    assert "pip install -r windowguide/requirements.txt" in section and "custom_nodes" in section
    assert "pip install windowguide\n" not in readme and "`pip install windowguide`" not in readme
    assert "ComfyUI 0.8.0" in section
