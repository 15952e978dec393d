"""Imports point one way (STYLE.md): ``messages`` imports nothing of ours; ``transform`` only
``messages`` and the Heap request models; ``ingest`` only ``messages`` and the queue interface
(plus the leaf modules ``clock`` and ``config``, the frozen configuration shapes it is given);
only ``server`` and ``cli`` import ``server`` (the services take the ``runtime`` leaf instead);
a ``cli`` command imports no other command, only the ``cli`` helper modules. Checked on the
source's syntax tree, so an import inside a function or under TYPE_CHECKING counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import heaprelay

PACKAGE = Path(heaprelay.__file__).parent

#: layer -> module prefixes of ours it may import (its own layer always allowed).
RULES: dict[str, tuple[str, ...]] = {
    "heaprelay.messages": (),
    "heaprelay.transform": ("heaprelay.messages", "heaprelay.heap.models"),
    "heaprelay.heap.models": (),
    # logging setup and FailureLog: every layer may use them.
    "heaprelay.logs": (),
    "heaprelay.ingest": (
        "heaprelay.messages",
        "heaprelay.queue.base",
        "heaprelay.clock",
        "heaprelay.config",
    ),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of ours in ``path``."""
    return imports_in(
        path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"
    )


def imports_in(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of ours in module ``name``'s ``source``."""
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "heaprelay" or (node.level and not node.module):
                # ``from heaprelay import x`` / ``from . import x``: each name is a module
                found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, mod))
    return [(line, m) for line, m in found if m == "heaprelay" or m.startswith("heaprelay.")]


def layer_files(layer: str) -> list[Path]:
    target = PACKAGE.parent.joinpath(*layer.split("."))
    if target.with_suffix(".py").is_file():
        return [target.with_suffix(".py")]
    return sorted(target.rglob("*.py"))


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(RULES))
def test_imports_point_one_way(layer: str) -> None:
    files = layer_files(layer)
    assert files, f"no source for {layer}"
    allowed = (layer, *RULES[layer])
    wrong = [
        f"{f.relative_to(PACKAGE.parent)}:{line} imports {mod}"
        for f in files
        for line, mod in imported(f)
        if not any(within(mod, a) for a in allowed)
    ]
    assert not wrong, f"{layer} may import only {allowed}:\n" + "\n".join(wrong)


def test_only_server_and_cli_import_the_server() -> None:
    wrong = [
        f"{f.relative_to(PACKAGE.parent)}:{line}"
        for f in sorted(PACKAGE.rglob("*.py"))
        if not within(module_name(f), "heaprelay.server")
        and not within(module_name(f), "heaprelay.cli")
        for line, mod in imported(f)
        if within(mod, "heaprelay.server")
    ]
    assert not wrong, "import heaprelay.runtime instead of heaprelay.server:\n" + "\n".join(wrong)


#: Modules of heaprelay.cli that commands share (every other module there is one command).
CLI_HELPERS = ("heaprelay.cli._queue", "heaprelay.cli._events", "heaprelay.cli.config")


def test_cli_commands_share_helpers_not_each_other() -> None:
    commands = [
        f
        for f in sorted((PACKAGE / "cli").glob("*.py"))
        if f.name != "__init__.py" and module_name(f) not in CLI_HELPERS
    ]
    assert commands
    wrong = [
        f"{f.relative_to(PACKAGE.parent)}:{line} imports {mod}"
        for f in commands
        for line, mod in imported(f)
        if within(mod, "heaprelay.cli")
        and mod != "heaprelay.cli"
        and not any(within(mod, h) for h in CLI_HELPERS)
        and not within(mod, module_name(f))
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_every_form_of_import() -> None:
    # A rule test must be able to fail: every form of import it has to catch.
    source = (
        "import heaprelay.queue\n"
        "import json\n"
        "from heaprelay import transform\n"
        "from ..router import worker\n"
        "from . import reasons\n"
        "def f():\n    from heaprelay.heap import client\n"
    )
    found = {m for _, m in imports_in(source, "heaprelay.messages.probe", is_package=False)}
    assert found == {
        "heaprelay.queue",
        "heaprelay.transform",
        "heaprelay.router",
        "heaprelay.messages.reasons",
        "heaprelay.heap",
    }
    assert not any(within(m, "heaprelay.messages") for m in found - {"heaprelay.messages.reasons"})
