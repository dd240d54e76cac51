"""The house's rules, read from the project's own imports with ``ast``: the worker and the HTTP API never import
each other (both reach Celery through ``service.queue``), the serving engine and its codecs know nothing of HTTP,
and nothing imports a private module or name of the frameworks (the web stack, Celery, Keras, TensorFlow,
Pydantic), so upgrading them is never a rewrite."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "worker", "trainserve", "bench", "tests")
FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "celery", "kombu", "keras", "tensorflow", "pydantic", "ai_edge_litert")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "service.api.app"
    target: str  # the imported module, e.g. "service.queue"
    names: tuple[str, ...]  # what ``from target import ...`` takes; empty for ``import target``
    line: int

    def __str__(self) -> str:
        taken = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.source}:{self.line} imports {self.target}{taken}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(tree: ast.Module, source: str, is_package: bool = False) -> Iterator[Import]:
    package = source if is_package else source.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(source, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield Import(source, target, tuple(alias.name for alias in node.names), node.lineno)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def crossings(imports: list[Import], importer: str, forbidden: str) -> list[str]:
    """Imports from ``importer``'s modules of ``forbidden`` or anything in it (``from service import api`` too)."""
    return [
        str(i)
        for i in imports
        if within(i.source, importer)
        and (within(i.target, forbidden) or any(within(f"{i.target}.{name}", forbidden) for name in i.names))
    ]


def private_imports(imports: list[Import]) -> list[str]:
    return [
        str(i)
        for i in imports
        if any(within(i.target, framework) for framework in FRAMEWORKS)
        and (any(part.startswith("_") for part in i.target.split(".")) or any(n.startswith("_") for n in i.names))
    ]


def private_attributes(tree: ast.Module, source: str) -> list[str]:
    """``starlette._utils.x`` reached through an attribute of an imported framework module is as private."""
    aliases = {
        alias.asname or alias.name.partition(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.partition(".")[0] in FRAMEWORKS
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                found.append(f"{source}:{node.lineno} uses {ast.unparse(node)}")
    return found


def project_modules() -> dict[str, tuple[ast.Module, bool]]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            modules[module_name(path)] = (tree, path.name == "__init__.py")
    return modules


MODULES = project_modules()
IMPORTS = [i for name, (tree, is_package) in MODULES.items() for i in imports_of(tree, name, is_package)]


def test_the_graph_is_read() -> None:
    # A parser that found nothing would pass every rule below.
    sources = {i.source for i in IMPORTS}
    assert {"service.api.app", "service.queue", "worker.tasks", "service.serving.engine"} <= sources
    assert any(i.source == "worker.tasks" and i.target == "service.queue" for i in IMPORTS)
    assert any(i.source == "service.api.app" and within(i.target, "fastapi") for i in IMPORTS)


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("worker", "service.api"),
        ("service.api", "worker"),
        # The engine and codecs serve any transport: no HTTP framework and no API module inside.
        ("service.serving", "service.api"),
        ("service.serving", "fastapi"),
        ("service.serving", "starlette"),
        # The domain modules below the API answer in exceptions, not responses.
        ("service.submit", "service.api"),
        ("service.queue", "service.api"),
        ("service.datasets", "service.api"),
        ("service.jobs", "service.api"),
        ("service.registry", "service.api"),
        # The Python client speaks to the service over HTTP only: of the package it takes the spec, nothing else.
        ("trainserve", "service.api"),
        ("trainserve", "worker"),
        ("trainserve", "service.db"),
        ("trainserve", "service.jobs"),
        ("trainserve", "service.serving"),
        ("trainserve", "service.submit"),
        ("trainserve", "service.keras_build"),
        ("trainserve", "sqlalchemy"),
        ("trainserve", "celery"),
    ],
)
def test_layer_does_not_import(importer: str, forbidden: str) -> None:
    assert any(within(name, importer) for name in MODULES), f"no module {importer}"
    crossing = crossings(IMPORTS, importer, forbidden)
    assert not crossing, "\n".join(crossing)


def test_nothing_private_from_the_web_frameworks() -> None:
    found = private_imports(IMPORTS)
    for name, (tree, _) in MODULES.items():
        found += private_attributes(tree, name)
    assert not found, "\n".join(found)


def test_the_rules_catch_what_they_forbid() -> None:
    # The checks applied to modules that break each rule, so a rule that could never fail would be seen to.
    probe = ast.parse(
        "from service import api\n"
        "from fastapi._compat import x\n"
        "from starlette.routing import _helper\n"
        "import uvicorn\n"
        "uvicorn._types.y\n"
    )
    found = list(imports_of(probe, "worker.probe"))
    assert crossings(found, "worker", "service.api") == ["worker.probe:1 imports service (api)"]
    assert len(private_imports(found)) == 2
    assert private_attributes(probe, "worker.probe") == ["worker.probe:5 uses uvicorn._types"]
    relative = list(imports_of(ast.parse("from ..api.errors import item\n"), "service.serving.probe"))
    assert crossings(relative, "service.serving", "service.api") == [
        "service.serving.probe:1 imports service.api.errors (item)"
    ]
