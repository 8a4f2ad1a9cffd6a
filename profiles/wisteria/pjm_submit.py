#!/usr/bin/env python3
"""Submit one Snakemake job script to PJM on Wisteria/BDEC-01 Aquarius; print its job id.

Called by Snakemake's cluster-generic executor as ``pjm_submit.py [--group G] JOBSCRIPT``.
Reads the job's ``# properties = {...}`` line (rule, threads, resources), picks the
Aquarius resource group, runs ``pjsub`` and prints only the numeric job id. Refuses
(message on stderr, exit status 2) when no PJM group is set or the request fits no
resource group.

Routing (Aquarius: 8 A100 GPUs, 72 cores and 512 GiB per node; no CPU-only group):
- A job takes ``slices = max(gpu, ceil(threads / 9), ceil(mem_mb / 61440), 1)`` GPU
  slices of a node (one GPU brings 9 cores and 60 GiB); CPU-only jobs therefore get one
  GPU slice, the smallest unit Aquarius allocates.
- 1, 2 or 4 slices (3 rounds up to 4): share-debug / share-short / share for runtimes
  up to 30 min / 2 h / 48 h, with ``-L gpu=N``.
- More than 4 slices: whole nodes, ``-L node=ceil(slices / 8)``: debug-a (1 node,
  30 min), short-a (1-2 nodes, 2 h), regular-a (1-8 nodes, 48 h).

The job inherits the submitting environment (``-X``): the virtual environment, ``HF_HOME``,
``BRAINLLM_PJM_MODULES`` (modules the job script loads) and the like reach the job.

Environment: ``BRAINLLM_PJM_GROUP`` (the ``-g`` group, unless ``--group`` is given),
``BRAINLLM_PJM_EXTRA_ARGS`` (extra pjsub arguments, shell-quoted), ``BRAINLLM_PJSUB``
(the pjsub executable, default ``pjsub``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CORES_PER_GPU = 9
MEM_MB_PER_GPU = 60 * 1024
GPUS_PER_NODE = 8
MAX_NODES = 8
DEFAULT_RUNTIME_MIN = 30
JOB_NAME_MAX = 63

# (resource group, longest runtime in minutes, most GPUs or nodes)
SHARE_GROUPS = [("share-debug", 30), ("share-short", 120), ("share", 48 * 60)]
NODE_GROUPS = [("debug-a", 30, 1), ("short-a", 120, 2), ("regular-a", 48 * 60, MAX_NODES)]
SHARE_GPU_COUNTS = (1, 2, 4)

SUBMITTED = re.compile(r"Job\s+(\d+)\s+submitted")


class SubmitRefused(Exception):
    """The job cannot be submitted as requested; the message says why and what to change."""


@dataclass(frozen=True)
class PjmRequest:
    rscgrp: str
    elapse: str
    gpus: int | None  # share groups: GPUs of one node
    nodes: int | None  # node groups: whole nodes
    notes: tuple[str, ...] = ()

    def limit_args(self) -> list[str]:
        args = ["-L", f"rscgrp={self.rscgrp}"]
        if self.gpus is not None:
            args += ["-L", f"gpu={self.gpus}"]
        else:
            args += ["-L", f"node={self.nodes}"]
        return args + ["-L", f"elapse={self.elapse}"]


def read_properties(jobscript: str | os.PathLike) -> dict:
    """The JSON of the job script's ``# properties = {...}`` line."""
    with open(jobscript) as handle:
        for line in handle:
            if line.startswith("# properties = "):
                return json.loads(line[len("# properties = "):])
    raise SubmitRefused(
        f"{jobscript}: no '# properties = {{...}}' line. Fix: use the profile's jobscript.sh "
        "(it keeps Snakemake's '# properties = {properties}' line)."
    )


def minutes_to_elapse(minutes: int) -> str:
    """Minutes -> PJM elapse ``HH:MM:SS`` (hours may exceed 24)."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def _as_int(value, name: str, rule: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SubmitRefused(
            f"rule {rule}: resource {name}={value!r} is not a number. "
            f"Fix: set {name} to a number in the profile's set-resources."
        ) from None
    return int(math.ceil(number))


def choose_request(rule: str, resources: dict, threads: int) -> PjmRequest:
    """Pick the Aquarius resource group, GPU or node count and elapse for one job."""
    gpus = _as_int(resources.get("gpu", 0) or 0, "gpu", rule)
    runtime = _as_int(resources.get("runtime", DEFAULT_RUNTIME_MIN) or DEFAULT_RUNTIME_MIN, "runtime", rule)
    mem_mb = _as_int(resources.get("mem_mb", 0) or 0, "mem_mb", rule)
    threads = max(_as_int(threads or 1, "threads", rule), 1)
    runtime = max(runtime, 1)
    if runtime > NODE_GROUPS[-1][1]:
        raise SubmitRefused(
            f"rule {rule}: runtime {runtime} min exceeds the 48 h limit of every Aquarius "
            "resource group. Fix: lower runtime in the profile's set-resources or split the work."
        )
    slices = max(gpus, math.ceil(threads / CORES_PER_GPU), math.ceil(mem_mb / MEM_MB_PER_GPU), 1)
    notes = []
    if slices > gpus and gpus > 0:
        notes.append(f"{gpus} GPU(s) raised to {slices} to cover {threads} threads / {mem_mb} MB")
    elapse = minutes_to_elapse(runtime)
    if slices <= SHARE_GPU_COUNTS[-1]:
        share_gpus = next(n for n in SHARE_GPU_COUNTS if n >= slices)
        if share_gpus != slices:
            notes.append(f"{slices} GPU slices rounded up to {share_gpus}")
        rscgrp = next(name for name, limit in SHARE_GROUPS if runtime <= limit)
        return PjmRequest(rscgrp, elapse, gpus=share_gpus, nodes=None, notes=tuple(notes))
    nodes = math.ceil(slices / GPUS_PER_NODE)
    if nodes > MAX_NODES:
        raise SubmitRefused(
            f"rule {rule}: {slices} GPUs need {nodes} nodes, more than the {MAX_NODES} of "
            "regular-a. Fix: lower gpu/threads/mem_mb in the profile's set-resources."
        )
    if slices % GPUS_PER_NODE:
        notes.append(f"{slices} GPU slices rounded up to {nodes} whole node(s)")
    rscgrp = next(name for name, limit, most in NODE_GROUPS if runtime <= limit and nodes <= most)
    return PjmRequest(rscgrp, elapse, gpus=None, nodes=nodes, notes=tuple(notes))


def pjm_output_path(properties: dict, workdir: Path) -> Path:
    """Where PJM writes the job's stdout+stderr: beside the rule's first log file."""
    logs = properties.get("log") or []
    if logs:
        return workdir / f"{logs[0]}.pjm.out"
    return workdir / "logs" / "pjm" / f"{properties.get('rule', 'job')}-{properties.get('jobid', 0)}.out"


def build_pjsub_command(jobscript: str, properties: dict, group: str, workdir: Path, environ: dict) -> tuple[list[str], PjmRequest]:
    rule = properties.get("rule") or f"group-{properties.get('groupid', 'job')}"
    request = choose_request(rule, properties.get("resources") or {}, properties.get("threads", 1))
    output = pjm_output_path(properties, workdir)
    command = [environ.get("BRAINLLM_PJSUB", "pjsub"), "-g", group, *request.limit_args()]
    command += ["-N", rule[:JOB_NAME_MAX], "-j", "-o", str(output), "-X"]
    command += shlex.split(environ.get("BRAINLLM_PJM_EXTRA_ARGS", ""))
    return command + [jobscript], request


def parse_job_id(pjsub_output: str) -> str:
    match = SUBMITTED.search(pjsub_output)
    if not match:
        raise SubmitRefused(f"pjsub printed no job id:\n{pjsub_output.strip()}")
    return match.group(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", help="PJM group for -g (default: $BRAINLLM_PJM_GROUP)")
    parser.add_argument("jobscript", help="job script written by Snakemake")
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        group = args.group or environ.get("BRAINLLM_PJM_GROUP", "").strip()
        if not group:
            raise SubmitRefused(
                "no PJM group to charge. Fix: export BRAINLLM_PJM_GROUP=<your group, e.g. gz00> "
                "before running snakemake, or add --group to cluster-generic-submit-cmd."
            )
        properties = read_properties(args.jobscript)
        command, request = build_pjsub_command(args.jobscript, properties, group, Path.cwd(), environ)
        Path(command[command.index("-o") + 1]).parent.mkdir(parents=True, exist_ok=True)
        for note in request.notes:
            print(f"pjm_submit: {properties.get('rule')}: {note}", file=sys.stderr)
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except FileNotFoundError:
            raise SubmitRefused(f"{command[0]} not found. Fix: run snakemake on a Wisteria login node.") from None
        if done.returncode != 0:
            raise SubmitRefused(f"pjsub exited with {done.returncode}:\n{done.stdout}{done.stderr}".rstrip())
        print(parse_job_id(done.stdout + done.stderr))
    except SubmitRefused as refusal:
        print(f"pjm_submit: {refusal}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
