"""What the package shows outside the repository: the PyPI page and the version."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import bingx_async

ROOT = Path(__file__).parent.parent


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_pypi_page_links_only_to_absolute_addresses() -> None:
    page = (ROOT / "PYPI_README.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", page)
    assert all(target.startswith("https://") for target in targets), targets


def test_the_pypi_page_is_the_package_readme() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["readme"] == "PYPI_README.md"


def test_the_pypi_quickstart_is_the_readme_quickstart() -> None:
    pypi = _python_blocks((ROOT / "PYPI_README.md").read_text())[0]
    assert pypi in _python_blocks((ROOT / "README.md").read_text())


def test_the_version_has_one_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert bingx_async.__version__ == project["version"]
    sources = [
        path
        for path in (ROOT / "bingx_async").rglob("*.py")
        # "0.0.0" stands for a copy that is not installed: not a version.
        if re.search(r"""__version__\s*=\s*["'](?!0\.0\.0)\d""", path.read_text())
    ]
    assert sources == [], "a version written in the code as well as in pyproject.toml"


def test_every_python_example_in_the_pages_compiles() -> None:
    # Whole programs live in docs/examples (type-checked and run by the tests); the pages'
    # snippets are fragments: they must at least stay valid Python.
    pages = [ROOT / "README.md", ROOT / "PYPI_README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for number, block in enumerate(_python_blocks(page.read_text())):
            name = f"{page.name} example {number + 1}"
            compile(block, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            checked += 1
    assert checked >= 20
