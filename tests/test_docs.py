"""The docs site (``mkdocs.yml``, ``docs/``) builds with ``mkdocs build --strict`` (no warning: no broken link or
anchor, no page left out of the navigation, every ``::: module`` of the API reference found), and the API reference
names every module of the package."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 300


def test_docs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"mkdocs build --strict did not finish in {BUILD_TIMEOUT_S} s; its output so far:\n{error.stderr}")
    problems = [line for line in done.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0 and not problems, (
        f"mkdocs build --strict failed (exit {done.returncode}; the docs tools come with pip install -e .[dev]). "
        "Fix these:\n" + "\n".join(problems or done.stderr.splitlines()[-20:])
    )
    assert (site / "api" / "losses" / "index.html").is_file()
    assert (site / "results" / "fashion_mnist" / "index.html").is_file()


def test_api_reference_names_every_module() -> None:
    package = ROOT / "wkd_lightning"
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in package.rglob("*.py")
    }
    referenced = {
        line.removeprefix("::: ").strip()
        for page in (ROOT / "docs" / "api").glob("*.md")
        for line in page.read_text().splitlines()
        if line.startswith("::: ")
    }
    missing = sorted(modules - referenced)
    hint = "modules without a '::: module' line in docs/api/*.md (add each to its package's page)"
    assert not missing, f"{hint}: {missing}"
