"""MkDocs hook: serve the measured results of ``benchmarks/results/`` (Markdown and plots) as pages under
``results/``, so the site shows the files the benchmark and study scripts wrote, never a copy retold by hand."""

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
SUFFIXES = (".md", ".png")


def on_files(files: Files, config) -> Files:
    """Add every ``benchmarks/results/*.md`` and ``*.png`` as ``results/<name>`` of the site.

    Args:
        files: the files MkDocs found in ``docs/``.
        config: the MkDocs configuration.

    Returns:
        The same collection with the result files appended.
    """
    for path in sorted(RESULTS.iterdir()):
        if path.suffix in SUFFIXES:
            files.append(File.generated(config, f"results/{path.name}", abs_src_path=str(path)))
    return files
