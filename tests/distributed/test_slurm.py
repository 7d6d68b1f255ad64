"""The SLURM template (``scripts/slurm/wkd_fit.sbatch``): its #SBATCH lines, its shell, and a real 2-"node" run of its
srun line through Lightning's SLURMEnvironment, with a stand-in ``srun`` (tests/distributed/fake_srun.py) that
starts the tasks on this machine with the variables real srun sets."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.distributed.launch import QUIET, ROOT, run_ok
from tests.distributed.test_ddp_cli import config_with

TEMPLATE = ROOT / "scripts" / "slurm" / "wkd_fit.sbatch"
#: sbatch's long options the template may use, with the form of their values.
SBATCH_OPTIONS = {
    "job-name": r"[\w.-]+",
    "nodes": r"\d+",
    "ntasks-per-node": r"\d+",
    "gpus-per-node": r"\d+",
    "cpus-per-task": r"\d+",
    "time": r"\d+:\d\d:\d\d",
    "signal": r"(B:)?(TERM|USR1|USR2|INT)@\d+",
    "output": r"[%\w.-]+",
}


def test_sbatch_lines_are_valid_options():
    lines = [line for line in TEMPLATE.read_text().splitlines() if line.startswith("#SBATCH")]
    assert lines
    for line in lines:
        match = re.fullmatch(r"#SBATCH --([\w-]+)=(\S+)", line)
        assert match, f"not a '#SBATCH --option=value' line: {line!r}"
        name, value = match.groups()
        assert name in SBATCH_OPTIONS, f"unexpected sbatch option {name}"
        assert re.fullmatch(SBATCH_OPTIONS[name], value), f"--{name}={value} is malformed"
    body = TEMPLATE.read_text()
    first_command = next(i for i, line in enumerate(body.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(body.splitlines()) if line.startswith("#SBATCH")), (
        "sbatch stops reading #SBATCH lines at the first command"
    )
    subprocess.run(["bash", "-n", str(TEMPLATE)], check=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.xdist_group("multiprocess")  # one at a time with the other multi-process tests (scripts/test.sh)
@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_template_runs_two_nodes_and_resumes(tmp_path, fashion_dir, monkeypatch):
    config = config_with(tmp_path, fashion_dir, batch_size=8)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").symlink_to(ROOT / "tests" / "distributed" / "fake_srun.py")
    env = {
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_ID": str(random.randint(100000, 999999)),  # Lightning's port: 15000 + the job id's last 4 digits
        "SLURM_JOB_NAME": "wkd",
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run_dir = tmp_path / "run"
    args = [str(config), str(run_dir), "--trainer.accelerator=cpu", *QUIET]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    first = run_ok(["bash", str(TEMPLATE), *args, "--trainer.max_epochs=1"], tmp_path / "job1.log")
    assert "MEMBER: 2/2" in first.output
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 1
    second = run_ok(["bash", str(TEMPLATE), *args, "--trainer.max_epochs=2"], tmp_path / "job2.log")
    assert "Restoring states from the checkpoint" in second.output  # the resubmitted job resumed
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["epochs"] == 2
