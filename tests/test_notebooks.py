"""The notebooks of ``notebooks/`` run top to bottom on a fresh install, in quick mode (``WKD_NOTEBOOK_QUICK=1``).

They are executed with nbclient in the ``python3`` kernel of the virtual environment (ipykernel from ``.[dev]``). The
teacher and student are forced to the stand-ins trained inside the notebooks and the study directory points to an
empty folder, so the test exercises the path a fresh clone takes (no ``runs/``) whatever this machine holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from wkd_lightning.study import report as report_module
from wkd_lightning.study.spec import load_study

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def execute(name: str, env: dict[str, str], timeout: int = 240):
    """Run a notebook in a fresh kernel with ``env`` added to the environment; returns the executed notebook."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel process inherits the environment of this one
    try:
        client = nbclient.NotebookClient(
            notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        )
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return notebook


def outputs(notebook) -> str:
    """All text printed or displayed by the notebook (images left out)."""
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(output.get("data", {}).get("text/plain", ""))
            texts.append(output.get("data", {}).get("text/markdown", ""))
    return "\n".join(texts)


def images(notebook) -> int:
    return sum("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))


@pytest.fixture
def quick_env(tmp_path) -> dict[str, str]:
    if not FASHION_MNIST.is_dir():
        pytest.skip(f"Fashion-MNIST is not installed at {FASHION_MNIST} (apt-get install dataset-fashion-mnist).")
    return {
        "WKD_NOTEBOOK_QUICK": "1",
        "WKD_NOTEBOOK_TEACHER": "train",
        "WKD_NOTEBOOK_STUDENT": "train",
        "WKD_STUDY_DIR": str(tmp_path / "no_study"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }


#: Committed with their outputs, executed on the Fashion-MNIST study's files, and what each output must show: the
#: study's teacher and seed-0 student (01, 02), the committed 5-seed report and the Born-Again table (03).
EXECUTED = {
    "01_category_interrelations.ipynb": ["trained teacher runs/study/teacher/"],
    "02_transport_plans.ipynb": [
        "trained teacher runs/study/teacher/",
        "trained student runs/study/wkd_l_class_mean_cosine/seed0/",
    ],
    "03_results.ipynb": [
        "Showing benchmarks/results/fashion_mnist.json (generated {generated})",
        "| seed | gen0 test top-1 |",
    ],
}


def test_committed_notebooks_show_the_study_outputs():
    """A reader on GitHub sees the real heatmaps, transport plans and result plots, not the stand-ins a fresh clone
    trains: the notebooks are committed executed top to bottom, without errors, on the study's own files, and 03 on
    the report committed beside it (not an older one)."""
    generated = json.loads((ROOT / "benchmarks" / "results" / "fashion_mnist.json").read_text())["generated"]
    assert sorted(EXECUTED) == sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
    for name, expected in EXECUTED.items():
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata["kernelspec"]["name"] == "python3"
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        counts = [cell.execution_count for cell in code]
        assert counts == list(range(1, len(code) + 1)), f"{name}: execute it top to bottom (notebooks/README.md)"
        assert not [o for cell in code for o in cell.outputs if o.output_type == "error"], name
        text = outputs(notebook)
        assert "STAND-IN" not in text, name
        for line in expected:
            assert line.format(generated=generated) in text, (name, line)
        assert images(notebook) >= 2, name


@pytest.mark.slow
def test_category_interrelations_notebook(quick_env):
    notebook = execute("01_category_interrelations.ipynb", quick_env)
    text = outputs(notebook)
    assert "STAND-IN teacher" in text
    assert "| class_mean_cosine |" in text and "| cka_paired |" in text
    assert images(notebook) == 2  # the five heatmaps, the t-SNE map


@pytest.mark.slow
def test_transport_plans_notebook(quick_env):
    notebook = execute("02_transport_plans.ipynb", quick_env)
    text = outputs(notebook)
    assert "STAND-IN student" in text and "computed here" in text
    line = next(x for x in text.splitlines() if x.startswith("W from the plans"))
    from_plans, from_loss = (float(part.rsplit(" ", 1)[-1].rstrip(";")) for part in line.split("; "))
    assert from_plans == pytest.approx(from_loss, rel=1e-4)  # the plans are WKD-L's own
    assert images(notebook) == 2  # the plans per image, the τ×ε grid
    assert "| 1000 |" in text


@pytest.mark.slow
def test_results_notebook_with_and_without_results(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the study file names its configs relative to the repository
    spec = load_study(ROOT / "configs" / "studies" / "fashion_mnist.yaml")
    records = [
        {"key": f"{run}/seed{seed}", "run": run, "seed": seed, "dir": "runs/study", "complete": True, "epochs": 12,
         "seconds": 1.0, "best_top1": top1, "last_top1": top1, "best_top5": 0.99, "last_top5": 0.99}
        for run, values in (("kd", (0.85, 0.86)), ("wkd_l_class_mean_cosine", (0.86, 0.88)))
        for seed, top1 in enumerate(values)
    ]  # fmt: skip
    report = report_module.build_report(spec)  # the study's real shape, then synthetic runs in it
    report.update(
        runs=report_module.aggregate(spec, records),
        records=records,
        curves={"kd": {"0": [80.0, 85.0], "1": [81.0, 86.0]}},
        steps=[{"step": "teacher", "command": "wkd fit", "complete": True, "best_top1": 0.91, "last_top1": 0.91},
               {"step": "ir", "command": "wkd-ir", "complete": True,
                "costs": {"class_mean_cosine": {"score": 1.0, "chance": 0.286}}}],
    )  # fmt: skip
    path = tmp_path / "fashion_mnist.json"
    path.write_text(json.dumps(report))
    notebook = execute("03_results.ipynb", {"WKD_RESULTS_JSON": str(path), "WKD_STUDY_DIR": str(tmp_path)})
    text = outputs(notebook)
    assert "| wkd_l_class_mean_cosine |" in text and "+1.50 ± 0.71" in text and "| ir | class_mean_cosine |" in text
    assert images(notebook) == 2

    committed = ROOT / "benchmarks/results/fashion_mnist.json"
    notebook = execute("03_results.ipynb", {"WKD_RESULTS_JSON": str(committed), "WKD_STUDY_DIR": str(tmp_path)})
    text = outputs(notebook)  # the committed results, with the per-seed measurements skipped (no runs here)
    wkd_lf = next(r for r in json.loads(committed.read_text())["runs"] if r["run"] == "wkd_lf")
    d = wkd_lf["vs_baseline"]["best_top1"]  # in points
    assert f"{d['mean']:+.2f} ± {d['std']:.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]" in text
    assert "| wkd_lf |" in text and images(notebook) == 2 and "needs the study's runs" in text

    notebook = execute(
        "03_results.ipynb", {"WKD_RESULTS_JSON": str(tmp_path / "missing.json"), "WKD_STUDY_DIR": str(tmp_path)}
    )
    assert "Nothing to show yet" in outputs(notebook) and images(notebook) == 0
