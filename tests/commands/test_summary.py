"""``summary.json`` tables: the monitored metric's best/last values, top-1 for classifiers and mAP for detectors."""

from __future__ import annotations

import json

import pytest

from wkd_lightning.commands.summary import format_table, main
from wkd_lightning.run.summary import result_line


def write(run_dir, **summary):
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"epochs": 3, "complete": True, "losses": [], **summary}))
    return run_dir


def test_table_of_classifier_runs_reads_top1_also_from_summaries_without_a_metric_key(tmp_path, capsys):
    kd = write(tmp_path / "kd", metric="val/top1", best_val_top1=0.8512, last_val_top1=0.85, losses=["KD"],
               best_val_top5=0.991, last_val_top5=0.99)  # fmt: skip
    old = write(tmp_path / "vanilla", best_val_top1=0.8, last_val_top1=0.79)  # written before the metric key existed
    table = format_table([kd, old])
    assert "| best top-1 (%) | last top-1 (%) | best top-5 (%) | last top-5 (%) |" in table.splitlines()[0]
    assert table.splitlines()[1] == "|---|---|---|---|---|---|---|"
    assert "| kd | KD | 3 | 85.12 | 85.00 | 99.10 | 99.00 |" in table
    assert "| vanilla | CE only | 3 | 80.00 | 79.00 | – | – |" in table  # no top-5 recorded then
    main([str(kd), str(old)])
    assert capsys.readouterr().out.strip() == table


def test_table_of_detector_runs_shows_map_and_refuses_mixed_metrics(tmp_path):
    det = write(tmp_path / "wkd_lf", metric="val/map", best_val_map=0.3456, last_val_map=0.34, losses=["WKDLogit"])
    assert format_table([det]).splitlines()[0].endswith("| best mAP (%) | last mAP (%) |")
    assert "| wkd_lf | WKDLogit | 3 | 34.56 | 34.00 |" in format_table([det])
    cls = write(tmp_path / "kd", metric="val/top1", best_val_top1=0.8, last_val_top1=0.8)
    with pytest.raises(ValueError, match=r"records val/top1 but .* records val/map"):
        format_table([det, cls])


def test_result_line_names_best_and_last_top1_and_top5():
    line = result_line({"best_val_top1": 0.8512, "last_val_top1": 0.85, "best_val_top5": 0.991, "last_val_top5": 0.99,
                        "epochs": 15})  # fmt: skip
    assert line == "best top-1 85.12 %, last top-1 85.00 % · best top-5 99.10 %, last top-5 99.00 % (15 epochs)"
    assert result_line({"metric": "val/map", "best_val_map": 0.3, "last_val_map": 0.25, "epochs": 2}) == (
        "best mAP 30.00 %, last mAP 25.00 % (2 epochs)"
    )


def test_wkd_summary_prints_the_table_and_a_missing_run_is_one_line(tmp_path):
    """The quickstart's last step, as shipped: ``wkd summary RUN_DIR...`` in a subprocess."""
    from tests.distributed.launch import run, run_ok

    kd = write(tmp_path / "kd", metric="val/top1", best_val_top1=0.8512, last_val_top1=0.85, losses=["KD"])
    done = run_ok(["wkd", "summary", str(kd)], tmp_path / "summary.log", timeout=120)
    assert "| kd | KD | 3 | 85.12 | 85.00 | – | – |" in done.output
    missing = run(["wkd", "summary", str(tmp_path / "nowhere")], tmp_path / "missing.log", timeout=120)
    assert missing.returncode == 1
    assert "Traceback" not in missing.output
    assert "nowhere" in missing.output
