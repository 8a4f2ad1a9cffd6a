#!/usr/bin/env python3
"""Print the state of one PJM job for Snakemake: exactly one of running, success, failed.

Called by Snakemake's cluster-generic executor as ``pjm_status.py JOBID``. Reads the job
history of ``pjstat -H``:
- ended (EXT / END / EXIT) with exit code 0 -> success (when the listing shows no exit
  code column, an ended job counts as success and Snakemake's own output check decides);
- ended with a nonzero exit code or PJM code, cancelled (CCL / CANCEL), rejected
  (RJT / REJECT) or in error (ERR / ERROR) -> failed;
- any other state (ACC, QUE, RNA, RUN, RNO, HLD, ... and their long forms) or a job not
  yet in the history -> running.
A transient pjstat failure prints ``running`` (and a warning on stderr) so that Snakemake
asks again at its next status check. ``BRAINLLM_PJSTAT`` names the pjstat executable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

ENDED = {"EXT", "END", "EXIT", "EXITED"}
FAILED = {"CCL", "CANCEL", "CANCELED", "CANCELLED", "RJT", "REJECT", "REJECTED", "ERR", "ERROR"}
STATE_COLUMNS = ("ST", "STATUS", "STATE")
EXIT_COLUMNS = ("EC", "EXIT_CODE", "EXIT")
PJM_CODE_COLUMNS = ("PC", "PJM_CODE")

# a date followed by a time is one field ("03/01 10:00:00", "2024/03/01(Fri) 10:00:00")
DATE = re.compile(r"^(\d{4}/)?\d{2}/\d{2}(\(\w+\))?$")
TIME = re.compile(r"^\d{2}:\d{2}(:\d{2})?$")


def _fields(line: str) -> list[str]:
    """Whitespace-separated fields with each date and the time after it merged into one."""
    tokens = line.split()
    fields: list[str] = []
    for token in tokens:
        if fields and TIME.match(token) and DATE.match(fields[-1]):
            fields[-1] += " " + token
        else:
            fields.append(token)
    return fields


def _column(header: list[str], row: list[str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in header:
            index = header.index(name)
            return row[index] if index < len(row) else None
    return None


def _code(value: str | None) -> int | None:
    if value is None or not re.fullmatch(r"-?\d+", value):
        return None
    return int(value)


def parse_history(text: str, job_id: str) -> tuple[str | None, int | None, int | None]:
    """(state, exit code, PJM code) of ``job_id`` in pjstat output; state None when absent.

    The last row whose first field is the job id wins; columns are found by the header
    line (the one containing JOB_ID). Without a usable header, the state is the first
    known state word of the row and the codes are unknown.
    """
    header: list[str] | None = None
    found = None
    for line in text.splitlines():
        fields = _fields(line)
        if not fields:
            continue
        if "JOB_ID" in fields:
            header = fields
        elif fields[0] == job_id:
            found = (header, fields)
    if found is None:
        return None, None, None
    header, row = found
    if header is not None and len(header) == len(row):
        state = _column(header, row, STATE_COLUMNS)
        return (
            state.upper() if state else None,
            _code(_column(header, row, EXIT_COLUMNS)),
            _code(_column(header, row, PJM_CODE_COLUMNS)),
        )
    known = ENDED | FAILED
    state = next((field.upper() for field in row[1:] if field.upper() in known), None)
    return state, None, None


def classify(state: str | None, exit_code: int | None, pjm_code: int | None) -> str:
    """Snakemake's word for a PJM state and its codes."""
    if state in FAILED:
        return "failed"
    if state in ENDED:
        if (exit_code or 0) != 0 or (pjm_code or 0) != 0:
            return "failed"
        return "success"
    return "running"


def job_status(job_id: str, environ: dict | None = None) -> str:
    environ = dict(os.environ if environ is None else environ)
    command = [environ.get("BRAINLLM_PJSTAT", "pjstat"), "-H"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SystemExit(f"pjm_status: {command[0]} not found. Fix: run snakemake on a Wisteria login node.")
    except subprocess.TimeoutExpired:
        print(f"pjm_status: {' '.join(command)} timed out; job {job_id} counted as running", file=sys.stderr)
        return "running"
    if done.returncode != 0:
        print(
            f"pjm_status: {' '.join(command)} exited with {done.returncode}: {done.stderr.strip()}; "
            f"job {job_id} counted as running",
            file=sys.stderr,
        )
        return "running"
    return classify(*parse_history(done.stdout, job_id))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].strip():
        print("usage: pjm_status.py JOBID", file=sys.stderr)
        return 2
    print(job_status(argv[0].strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
