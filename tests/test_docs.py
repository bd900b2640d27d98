"""The docs: the built site's check, and pages that name things in the code."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bingx_async.testing import FakeBingX, LoopClock

ROOT = Path(__file__).parent.parent
EPOCH = 1_700_000_000.0


def _check_site_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_site", ROOT / ".ci" / "check_site.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_site"] = module
    spec.loader.exec_module(module)
    return module


check_site = _check_site_module()


def _site(tmp_path: Path, pages: dict[str, str]) -> Path:
    for name, body in pages.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html><body>{body}</body></html>", encoding="utf-8")
    return tmp_path


def test_a_clean_site_has_no_problems(tmp_path: Path) -> None:
    """Links to pages, anchors and files that exist, and a plain pipe, pass."""
    site = _site(
        tmp_path,
        {
            "index.html": '<a href="api/#bingx_async.BingXClient">client</a><code>str | None</code>'
            '<a href="https://example.com/missing">out</a><a href="#top">top</a><p id="top"></p>',
            "api/index.html": '<h2 id="bingx_async.BingXClient"></h2><a href="../">home</a>'
            '<a href="../examples/quickstart.py">example</a>',
            "examples/quickstart.py": "",
        },
    )
    assert check_site.check(site) == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            "Raises :class:<code>QueueTimeoutError</code>",
            "index.html: shows a raw role :class:",
        ),
        ("see :meth:<code>with_endpoint</code>", "index.html: shows a raw role :meth:"),
        ("see :doc:<code>shared-limits</code>", "index.html: shows a raw role :doc:"),
        ("<td><code>str \\| None</code></td>", "index.html: shows an escaped pipe \\|"),
        (
            '<a href="api/">the reference</a>',
            "index.html: link 'api/' points to no file of the site",
        ),
        (
            '<a href="#nowhere">here</a>',
            "index.html: link '#nowhere' points to no anchor of its page",
        ),
        (
            '<a href="other/#bingx_async.Gone">gone</a>',
            "index.html: link 'other/#bingx_async.Gone' points to no anchor of its page",
        ),
    ],
)
def test_each_problem_is_reported(tmp_path: Path, body: str, problem: str) -> None:
    """A raw role, an escaped pipe and a broken internal link each fail the check."""
    site = _site(tmp_path, {"index.html": body, "other/index.html": '<p id="here"></p>'})
    assert check_site.check(site) == [problem]


def test_text_in_scripts_is_not_checked(tmp_path: Path) -> None:
    """The search index and other scripts are not what a reader sees."""
    site = _site(tmp_path, {"index.html": '<script>var x = ":class: \\\\|";</script>'})
    assert check_site.check(site) == []


def test_the_check_exits_non_zero_on_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command fails the build, and says why."""
    site = _site(tmp_path, {"index.html": '<a href="gone.html">gone</a>'})
    assert check_site.main([str(site)]) == 1
    assert "index.html: link 'gone.html' points to no file of the site" in capsys.readouterr().out


def test_every_logger_of_the_library_is_listed_in_the_logging_page() -> None:
    """A logger the code logs to, or filters, has its section in docs/logging.md."""
    names = {
        name
        for path in (ROOT / "bingx_async").rglob("*.py")
        for name in re.findall(r"""getLogger\(["']([^"']+)["']\)""", path.read_text())
    }
    page = (ROOT / "docs" / "logging.md").read_text()
    assert names == {"bingx_async", "httpx", "websockets.client"}
    assert all(f"## `{name}`" in page for name in names)


def test_every_module_the_end_to_end_page_names_exists() -> None:
    """ "One close, end to end" in docs/development.md names only modules, and names in them,
    that exist."""
    page = (ROOT / "docs" / "development.md").read_text()
    section = page.split("## One close, end to end", 1)[1].split("\n## ", 1)[0]
    paths = set(re.findall(r"bingx_async(?:/\w+)+\.py", section))
    dotted = set(re.findall(r"bingx_async(?:\.\w+)+", section))
    assert len(paths) >= 15
    missing = [path for path in sorted(paths) if not (ROOT / path).is_file()]
    missing += [name for name in sorted(dotted) if importlib.util.find_spec(name) is None]
    assert missing == []
    # "(`bingx_async/_flights.py`, `Flights.run`)": the names after a path are in it.
    named = re.findall(r"\(`(bingx_async/[\w/]+)\.py`((?:,\s+`[\w.]+`)+)", section)
    assert len(named) >= 10
    for path, names in named:
        module = importlib.import_module(path.replace("/", "."))
        for name in re.findall(r"`([\w.]+)`", names):
            found: object = module
            for part in name.split("."):
                assert hasattr(found, part), f"{path}.py has no {name}"
                found = getattr(found, part)


# --- the example of docs/fills.md ------------------------------------------------------------


def _fills_page_blocks() -> tuple[str, str]:
    """The page's copy of the example, and the output it says the example prints."""
    page = (ROOT / "docs" / "fills.md").read_text()
    section = page.split("## A complete example", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    output = re.findall(r"```text\n(.*?)```", section, flags=re.DOTALL)
    assert len(code) == len(output) == 1
    return code[0], output[0]


def test_the_fills_page_shows_its_example_as_it_is() -> None:
    code, _ = _fills_page_blocks()
    assert code == (ROOT / "docs" / "examples" / "wait_fills.py").read_text()


@pytest.mark.looptime
@pytest.mark.usefixtures("websockets_installed")
async def test_the_fills_example_prints_what_its_page_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/examples/wait_fills.py, in virtual time over loopback sockets: every fill, from the
    stream or the order query, and the reconnection, as the page shows them."""
    path = ROOT / "docs" / "examples" / "wait_fills.py"
    spec = importlib.util.spec_from_file_location("example_fills", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    await example.run(FakeBingX(clock=LoopClock(EPOCH), seed=1))
    _, output = _fills_page_blocks()
    assert capsys.readouterr().out == output
