"""Stand-in for the PJM commands pjsub, pjstat and pjdel (tests only).

State lives in ``$PJM_STANDIN_DIR``: ``pjsub.jsonl`` / ``pjdel.jsonl`` record every call,
``jobs/<id>.json`` holds each job's state. ``pjsub`` runs the job script in the
background (its own session, so ``pjdel`` can kill it) with stdout+stderr to the ``-o``
file and records the exit code when it ends; the job sees the submitting environment only
with ``-X`` (plus ``-x NAME=VALUE`` settings). Jobs named (``-N``) in a comma-separated
list are not run but end in a forced state:
``PJM_STANDIN_FAIL`` (EXT, exit code 3), ``PJM_STANDIN_CANCEL`` (CCL),
``PJM_STANDIN_REJECT`` (RJT), ``PJM_STANDIN_ERROR`` (ERR).
``pjstat -H`` lists ended jobs, ``pjstat`` the queued and running ones, in the Fujitsu
short form (ST = EXT, CCL, ...) or, with ``PJM_STANDIN_FORMAT=long``, Wisteria's long form
(STATUS = END, CANCEL, ...).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ENDED = {"EXT", "CCL", "RJT", "ERR"}
LONG_FORM = {"QUE": "QUEUED", "RUN": "RUNNING", "EXT": "END", "CCL": "CANCEL", "RJT": "REJECT", "ERR": "ERROR"}
FORCED = {"PJM_STANDIN_FAIL": ("EXT", 3), "PJM_STANDIN_CANCEL": ("CCL", None),
          "PJM_STANDIN_REJECT": ("RJT", None), "PJM_STANDIN_ERROR": ("ERR", None)}
OPTIONS_WITH_VALUE = {"-g", "-L", "-N", "-o", "-e", "-x", "--rsc-list", "--name"}


def state_dir() -> Path:
    root = os.environ.get("PJM_STANDIN_DIR")
    if not root:
        sys.exit("[ERR.] PJM stand-in: PJM_STANDIN_DIR is not set")
    path = Path(root)
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    return path


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps(record) + "\n")


def next_job_id(root: Path) -> int:
    with open(root / "counter", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        last = int(handle.read().strip() or 1334957)
        handle.seek(0)
        handle.truncate()
        handle.write(str(last + 1))
    return last + 1


def write_job(root: Path, job_id: int, **fields) -> None:
    path = root / "jobs" / f"{job_id}.json"
    job = json.loads(path.read_text()) if path.exists() else {}
    job.update(fields)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def read_jobs(root: Path) -> dict[int, dict]:
    return {int(p.stem): json.loads(p.read_text()) for p in sorted((root / "jobs").glob("*.json"))}


def parse_pjsub_args(argv: list[str]) -> tuple[dict, str]:
    options: dict[str, list[str]] = {}
    i = 0
    while i < len(argv) - 1:
        arg = argv[i]
        if arg in OPTIONS_WITH_VALUE:
            options.setdefault(arg, []).append(argv[i + 1])
            i += 2
        else:
            options.setdefault(arg, []).append("")
            i += 1
    return options, argv[-1]


def pjsub(argv: list[str]) -> int:
    root = state_dir()
    if not argv:
        print("[ERR.] PJM 0005 pjsub no job script", file=sys.stderr)
        return 1
    options, script = parse_pjsub_args(argv)
    job_id = next_job_id(root)
    name = options.get("-N", [Path(script).name])[-1]
    output = options.get("-o", [f"{name}.{job_id}.out"])[-1]
    append_record(root / "pjsub.jsonl", {"jobid": job_id, "argv": argv, "cwd": os.getcwd(),
                                         "script_text": Path(script).read_text()})
    write_job(root, job_id, name=name, state="QUE", ec=None, submitted=time.time())
    for variable, (state, code) in FORCED.items():
        if name in os.environ.get(variable, "").split(","):
            Path(output).write_text(f"stand-in: job {job_id} forced to {state}\n")
            write_job(root, job_id, state=state, ec=code)
            break
    else:
        # like PJM: the submitting environment reaches the job only with -X
        env = dict(os.environ) if "-X" in options else {
            "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "PJM_STANDIN_DIR": str(root)}
        for pair in options.get("-x", []):
            for item in pair.split(","):
                key, _, value = item.partition("=")
                env[key] = value
        env["PJM_JOBID"] = str(job_id)
        runner = subprocess.Popen(
            [sys.executable, __file__, "run", str(job_id), script, output],
            env=env, start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        write_job(root, job_id, pid=runner.pid)
    print(f"[INFO] PJM 0000 pjsub Job {job_id} submitted.")
    return 0


def run(job_id: str, script: str, output: str) -> int:
    """Background part of pjsub: run the script, record the exit code."""
    root = state_dir()
    write_job(root, int(job_id), state="RUN")
    with open(output, "w") as out:
        code = subprocess.call(["bash", script], stdout=out, stderr=subprocess.STDOUT)
    job = read_jobs(root)[int(job_id)]
    if job["state"] != "CCL":
        write_job(root, int(job_id), state="EXT", ec=code)
    return 0


def pjstat(argv: list[str]) -> int:
    root = state_dir()
    history = "-H" in argv
    long_form = os.environ.get("PJM_STANDIN_FORMAT") == "long"
    print("Wisteria/BDEC-01 scheduled stop time: 2099/01/01(Thu) 09:00:00 (Remain: 99days 00:00:00)")
    print()
    if long_form:
        print("JOB_ID     JOB_NAME           STATUS  PROJECT  RSCGROUP     START_DATE        ELAPSE    EXIT_CODE")
    else:
        print("JOB_ID     JOB_NAME           MD ST  USER     START_DATE      ELAPSE_LIM NODE_REQUIRE LST EC  PC  SN PRI")
    for job_id, job in read_jobs(root).items():
        if (job["state"] in ENDED) != history:
            continue
        code = "-" if job.get("ec") is None else str(job["ec"])
        start = time.strftime("%m/%d %H:%M:%S", time.localtime(job.get("submitted", 0)))
        if long_form:
            print(f"{job_id:<10} {job['name']:<18} {LONG_FORM[job['state']]:<7} gz00     share-debug  {start}  00:00:01  {code}")
        else:
            print(f"{job_id:<10} {job['name']:<18} NM {job['state']:<3} user     {start} 00:30:00   1            "
                  f"{job['state']:<3} {code:<3} 0   0  127")
    return 0


def pjdel(argv: list[str]) -> int:
    root = state_dir()
    append_record(root / "pjdel.jsonl", {"argv": argv})
    jobs = read_jobs(root)
    for arg in argv:
        job = jobs.get(int(arg))
        if job is None or job["state"] in ENDED:
            print(f"[ERR.] PJM 0100 pjdel Job {arg} does not exist.", file=sys.stderr)
            continue
        write_job(root, int(arg), state="CCL")
        if job.get("pid"):
            try:
                os.killpg(job["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        print(f"[INFO] PJM 0100 pjdel Accepted job {arg}.")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "run":
        sys.exit(run(*sys.argv[2:5]))
    sys.exit({"pjsub": pjsub, "pjstat": pjstat, "pjdel": pjdel}[sys.argv[1]](sys.argv[2:]))
