#!/usr/bin/env python
"""A stand-in for SLURM's ``srun`` on one machine: starts SLURM_NNODES × SLURM_NTASKS_PER_NODE tasks of the command
with the variables real srun sets (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS, ...), all on 127.0.0.1.

It accepts only the srun options the template uses, so a template line that real srun would read differently fails.
"""

import os
import subprocess
import sys

KNOWN = {"--kill-on-bad-exit=1"}
args = sys.argv[1:]
while args and args[0].startswith("-"):
    if args[0] not in KNOWN:
        sys.exit(f"fake srun: option {args[0]!r} is not one the template is expected to use")
    args.pop(0)
if not args:
    sys.exit("fake srun: no command")
nodes, per_node = int(os.environ["SLURM_NNODES"]), int(os.environ["SLURM_NTASKS_PER_NODE"])
tasks = []
for node in range(nodes):
    for local in range(per_node):
        env = dict(
            os.environ,
            SLURM_PROCID=str(node * per_node + local),
            SLURM_LOCALID=str(local),
            SLURM_NODEID=str(node),
            SLURM_NTASKS=str(nodes * per_node),
            SLURM_NODELIST="127.0.0.1",
        )
        tasks.append(subprocess.Popen(args, env=env))
codes = [task.wait() for task in tasks]
sys.exit(max(codes, key=abs))
