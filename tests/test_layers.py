"""The code's layers (README "Development"): a module imports only from its own layer or lower,
and the top of the package holds only errors, config and clock. Read from every module's source
with `ast`, so an upward import fails here before it tangles anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pm_arb

PACKAGE = Path(pm_arb.__file__).parent

ROOM_LAYER = {
    "wire": 0, "book": 0, "events": 0, "universe": 0, "metrics": 0,
    "store": 1, "reader": 1, "export": 1,
    "capture": 2, "actors": 2,
    "plant": 3, "sim": 3,
    "commands": 4, "cli": 4,
}
# Modules whose layer is not their room's: the one module of universe/ that does I/O.
MODULE_LAYER = {"pm_arb.universe.gamma": 2}
TOP_MODULES = {"errors", "config", "clock", "__init__", "__main__"}


def layer_of(module: str) -> int | None:
    """The layer of a pm_arb module; None for the package's top (usable from every layer)."""
    for name, layer in MODULE_LAYER.items():
        if module == name or module.startswith(name + "."):
            return layer
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in ROOM_LAYER:
        return None
    return ROOM_LAYER[parts[1]]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> list[str]:
    """Every pm_arb module a source file imports, at any depth (function-level imports count)."""
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pm_arb":
                out += [f"pm_arb.{a.name}" for a in node.names]
            elif node.module.startswith("pm_arb."):
                out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("pm_arb.")]
    return out


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_checker_sees_every_room_and_their_imports():
    rooms = {p.relative_to(PACKAGE).parts[0] for p in sources() if p.parent != PACKAGE}
    assert rooms == set(ROOM_LAYER), "a new room needs a layer in ROOM_LAYER and in the README"
    assert len(imported(PACKAGE / "plant" / "run_capture.py")) > 10  # the checker reads real imports


def test_only_errors_config_and_clock_live_at_the_top():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= TOP_MODULES, f"move {sorted(top - TOP_MODULES)} into a room (README 'Development')"


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path in sources():
        me = layer_of(module_name(path))
        if me is None:
            continue
        for target in imported(path):
            theirs = layer_of(target)
            if theirs is not None and theirs > me:
                upward.append(f"{module_name(path)} (layer {me}) imports {target} (layer {theirs})")
    assert upward == []


def test_an_upward_import_is_caught(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from pm_arb.commands.books import run\nimport pm_arb.plant.run_capture\n")
    me = layer_of("pm_arb.book.order_book")
    caught = [t for t in imported(probe) if layer_of(t) > me]
    assert caught == ["pm_arb.commands.books", "pm_arb.plant.run_capture"]


def test_every_room_is_a_package_that_declares_its_surface():
    import importlib
    import importlib.util

    for room in sorted(ROOM_LAYER):
        package = importlib.import_module(f"pm_arb.{room}")
        assert package.__doc__, f"pm_arb/{room}/__init__.py needs a docstring saying what the room holds"
        names = getattr(package, "__all__", None)
        assert names, f"pm_arb/{room}/__init__.py needs __all__"
        for name in names:  # each is an attribute, or a module of the room
            assert hasattr(package, name) or importlib.util.find_spec(f"pm_arb.{room}.{name}"), f"pm_arb.{room}.__all__ names {name!r}, which does not exist"
