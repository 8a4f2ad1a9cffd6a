"""Execution profiles (local, slurm, wisteria), the PJM submit/status scripts and the conda envs.

The Wisteria profile runs for real against stand-in pjsub/pjstat/pjdel executables
(tests/pjm_standin) that run each job script in the background and report its state in
PJM's formats. The SLURM profile is run on a real single-node cluster by .ci/slurm.sh.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
import yte
from conftest import make_workdir

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"
WISTERIA = PROFILES / "wisteria"
STANDIN = REPO / "tests" / "pjm_standin"
MINI_SNAKEFILE = REPO / "tests" / "profile_workflow" / "Snakefile"
GPU_RULES = ["features", "features_tuned", "contrastive", "contrastive_lora", "contrastive_shared", "encoding", "encoding_banded", "group_transfer",
             "features_vocabulary", "decoding_lora", "generation_brain_prompt", "generation_brain_prompt_eeg",
             "generation_beam_search", "visual_features", "visual_generative"]
CLUSTER_PROFILES = ["slurm", "wisteria"]

HANG_GUARD_S = 1800  # stops a hung run only; no test outcome depends on how fast the machine is


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pjm_submit = load_module("pjm_submit", WISTERIA / "pjm_submit.py")
pjm_status = load_module("pjm_status", WISTERIA / "pjm_status.py")


def load_profile(name: str, environ: dict | None = None) -> dict:
    """A profile as Snakemake reads it (YTE templates evaluated under ``environ``)."""
    saved = dict(os.environ)
    try:
        if environ is not None:
            os.environ.clear()
            os.environ.update(environ)
        with open(PROFILES / name / "config.yaml") as stream:
            return yte.process_yaml(stream, require_use_yte=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ---------------------------------------------------------------- profile contents


def test_local_profile():
    profile = load_profile("local")
    assert profile["cores"] == "all"
    assert profile["rerun-incomplete"] is True
    assert profile["printshellcmds"] is True
    assert profile["keep-going"] is False
    assert "executor" not in profile
    assert 0 < profile["resources"]["mem_mb"] <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e6
    assert all(profile["set-resources"][rule]["gpu"] == 1 for rule in ("features", "contrastive_lora"))


@pytest.mark.parametrize("name", CLUSTER_PROFILES)
def test_cluster_profile_routes_every_gpu_rule(name):
    profile = load_profile(name)
    assert profile["jobs"] == 8
    assert profile["retries"] >= 1
    assert profile["latency-wait"] >= 30
    assert 30 <= profile["seconds-between-status-checks"] <= 60
    for rule in GPU_RULES:
        resources = profile["set-resources"][rule]
        assert resources["gpu"] >= 1, rule
        assert resources["runtime"] > 0 and resources["mem_mb"] > 0, rule
        assert profile["set-threads"][rule] >= 1, rule
    assert profile["default-resources"]["gpu"] == 0


def test_default_profile_has_no_executor_settings():
    default = PROFILES / "default" / "config.yaml"
    if default.exists():
        keys = set(yaml.safe_load(default.read_text()) or {})
        assert not keys & {"executor", "jobs", "cluster-generic-submit-cmd", "jobscript", "slurm"}, keys


def test_slurm_profile_partition_and_account_from_environment():
    profile = load_profile("slurm", {"BRAINLLM_SLURM_PARTITION": "gpu", "BRAINLLM_SLURM_ACCOUNT": "lab"})
    assert profile["executor"] == "slurm"
    assert profile["default-resources"]["slurm_partition"] == "gpu"
    assert profile["default-resources"]["slurm_account"] == "lab"
    unset = load_profile("slurm", {})["default-resources"]
    assert "slurm_partition" not in unset and "slurm_account" not in unset


def test_wisteria_profile_commands_resolve_to_profile_files():
    profile = load_profile("wisteria")
    assert profile["executor"] == "cluster-generic"
    for key in ("cluster-generic-submit-cmd", "cluster-generic-status-cmd", "jobscript"):
        path = WISTERIA / profile[key]
        assert path.is_file(), key
        if key != "jobscript":
            assert os.access(path, os.X_OK), f"{path} must be executable"
    assert profile["cluster-generic-cancel-cmd"] == "pjdel"


# ---------------------------------------------------------------- submit: routing


@pytest.mark.parametrize(
    "resources, threads, expected",
    [
        ({"gpu": 1, "runtime": 20}, 1, ("share-debug", 1, None, "00:20:00")),
        ({"gpu": 1, "runtime": 30}, 1, ("share-debug", 1, None, "00:30:00")),
        ({"gpu": 2, "runtime": 90}, 9, ("share-short", 2, None, "01:30:00")),
        ({"gpu": 3, "runtime": 600}, 1, ("share", 4, None, "10:00:00")),
        ({"gpu": 4, "runtime": 2880}, 1, ("share", 4, None, "48:00:00")),
        ({"runtime": 1441}, 1, ("share", 1, None, "24:01:00")),
        ({}, 1, ("share-debug", 1, None, "00:30:00")),  # CPU-only: one GPU slice
        ({"gpu": 0, "runtime": 60}, 16, ("share-short", 2, None, "01:00:00")),  # 16 threads > 9 cores
        ({"gpu": 0, "mem_mb": 100_000}, 1, ("share-debug", 2, None, "00:30:00")),  # > 60 GiB
        ({"gpu": 1, "mem_mb": 200_000}, 1, ("share-debug", 4, None, "00:30:00")),
        ({"gpu": 6, "runtime": 200}, 1, ("regular-a", None, 1, "03:20:00")),
        ({"gpu": 8, "runtime": 30}, 1, ("debug-a", None, 1, "00:30:00")),
        ({"gpu": 8, "runtime": 60}, 1, ("short-a", None, 1, "01:00:00")),
        ({"gpu": 16, "runtime": 120}, 1, ("short-a", None, 2, "02:00:00")),
        ({"gpu": 16, "runtime": 121}, 1, ("regular-a", None, 2, "02:01:00")),
        ({"gpu": 24, "runtime": 100}, 1, ("regular-a", None, 3, "01:40:00")),
        ({"gpu": 64, "runtime": 2880}, 1, ("regular-a", None, 8, "48:00:00")),
        ({"gpu": "2", "runtime": "45"}, 1, ("share-short", 2, None, "00:45:00")),
    ],
)
def test_choose_request(resources, threads, expected):
    request = pjm_submit.choose_request("features", resources, threads)
    assert (request.rscgrp, request.gpus, request.nodes, request.elapse) == expected


@pytest.mark.parametrize(
    "resources, message",
    [
        ({"gpu": 1, "runtime": 2881}, "48 h"),
        ({"gpu": 65}, "9 nodes"),
        ({"gpu": "two"}, "not a number"),
    ],
)
def test_choose_request_refuses(resources, message):
    with pytest.raises(pjm_submit.SubmitRefused, match=message):
        pjm_submit.choose_request("features", resources, 1)


def test_rounding_is_reported():
    assert any("rounded up to 4" in note for note in pjm_submit.choose_request("x", {"gpu": 3}, 1).notes)
    assert not pjm_submit.choose_request("x", {"gpu": 2}, 1).notes


@pytest.mark.parametrize("minutes, elapse", [(1, "00:01:00"), (59, "00:59:00"), (60, "01:00:00"), (2880, "48:00:00")])
def test_minutes_to_elapse(minutes, elapse):
    assert pjm_submit.minutes_to_elapse(minutes) == elapse


# ---------------------------------------------------------------- submit: the script


def write_jobscript(path: Path, properties: dict) -> Path:
    path.write_text(f"#!/bin/bash\n# properties = {json.dumps(properties)}\necho job ran\n")
    return path


def standin_env(state_dir: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(PATH=f"{STANDIN}{os.pathsep}{env['PATH']}", PJM_STANDIN_DIR=str(state_dir), BRAINLLM_PJM_MODULES="")
    env.pop("BRAINLLM_PJM_GROUP", None)
    env.update(extra)
    return env


def pjsub_records(state_dir: Path) -> list[dict]:
    path = state_dir / "pjsub.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def options(argv: list[str]) -> dict[str, list[str]]:
    """pjsub argv (without the script) -> option -> values."""
    parsed: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        if argv[i] in ("-j", "-X"):
            parsed.setdefault(argv[i], []).append("")
            i += 1
        else:
            parsed.setdefault(argv[i], []).append(argv[i + 1])
            i += 2
    return parsed


def run_submit(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(WISTERIA / "pjm_submit.py"), *args], env=env, cwd=cwd, capture_output=True, text=True)


def test_submit_prints_only_the_job_id(tmp_path):
    script = write_jobscript(tmp_path / "job.sh", {
        "rule": "features", "threads": 9, "log": ["results/logs/features/a.log"],
        "resources": {"gpu": 1, "runtime": 120, "mem_mb": 60000}, "jobid": 4})
    done = run_submit([str(script)], standin_env(tmp_path / "pjm", BRAINLLM_PJM_GROUP="gz00"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\d+\n", done.stdout), done.stdout
    (record,) = pjsub_records(tmp_path / "pjm")
    assert str(record["jobid"]) == done.stdout.strip()
    assert record["argv"][-1] == str(script)
    opts = options(record["argv"][:-1])
    assert opts["-g"] == ["gz00"]
    assert opts["-L"] == ["rscgrp=share-short", "gpu=1", "elapse=02:00:00"]
    assert opts["-N"] == ["features"] and "-j" in opts and "-X" in opts
    assert opts["-o"] == [str(tmp_path / "results/logs/features/a.log.pjm.out")]
    assert (tmp_path / "results/logs/features").is_dir()


def test_submit_group_argument_and_extra_args(tmp_path):
    script = write_jobscript(tmp_path / "job.sh", {"rule": "ingest", "threads": 1, "log": [], "resources": {}, "jobid": 7})
    env = standin_env(tmp_path / "pjm", BRAINLLM_PJM_EXTRA_ARGS="--mail-list me@example.org -m e")
    done = run_submit(["--group", "jh0001", str(script)], env, tmp_path)
    assert done.returncode == 0, done.stderr
    opts = options(pjsub_records(tmp_path / "pjm")[0]["argv"][:-1])
    assert opts["-g"] == ["jh0001"]
    assert opts["-L"] == ["rscgrp=share-debug", "gpu=1", "elapse=00:30:00"]
    assert opts["-o"] == [str(tmp_path / "logs/pjm/ingest-7.out")]
    assert opts["--mail-list"] == ["me@example.org"] and opts["-m"] == ["e"]


@pytest.mark.parametrize(
    "properties, group, message",
    [
        ({"rule": "features", "resources": {"gpu": 1}}, None, "BRAINLLM_PJM_GROUP"),
        ({"rule": "features", "resources": {"gpu": 1, "runtime": 3000}}, "gz00", "48 h"),
        ({"rule": "features", "resources": {"gpu": 72}}, "gz00", "more than the 8"),
        (None, "gz00", "no '# properties"),
    ],
)
def test_submit_refuses(tmp_path, properties, group, message):
    script = tmp_path / "job.sh"
    if properties is None:
        script.write_text("#!/bin/bash\necho no properties\n")
    else:
        write_jobscript(script, properties)
    extra = {"BRAINLLM_PJM_GROUP": group} if group else {}
    done = run_submit([str(script)], standin_env(tmp_path / "pjm", **extra), tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr and "Fix:" in done.stderr
    assert pjsub_records(tmp_path / "pjm") == []


def test_submit_fails_when_pjsub_prints_no_job_id(tmp_path):
    fake = tmp_path / "pjsub"
    fake.write_text("#!/bin/sh\necho '[ERR.] PJM 0057 pjsub node=1 is greater than the upper limit'\n")
    fake.chmod(0o755)
    script = write_jobscript(tmp_path / "job.sh", {"rule": "x", "resources": {}})
    done = run_submit([str(script)], standin_env(tmp_path / "pjm", BRAINLLM_PJM_GROUP="gz00", BRAINLLM_PJSUB=str(fake)), tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "PJM 0057" in done.stderr


# ---------------------------------------------------------------- status


SHORT_FORM = """\
Wisteria/BDEC-01 scheduled stop time: 2025/03/31(Mon) 09:00:00 (Remain: 20days 01:02:03)

JOB_ID     JOB_NAME   MD ST  USER     START_DATE      ELAPSE_LIM NODE_REQUIRE LST EC  PC  SN PRI
1334958    features   NM EXT user01   03/10 10:00:00  02:00:00   1            EXT 0   0   0  127
1334959    ingest     NM EXT user01   03/10 10:01:00  00:30:00   1            EXT 1   0   0  127
1334960    encoding   NM EXT user01   03/10 10:02:00  00:30:00   1            EXT 0   2   0  127
1334961    align      NM CCL user01   -               00:30:00   1            CCL -   -   0  127
1334962    report     NM RJT user01   -               00:30:00   1            RJT -   -   0  127
1334963    features   NM ERR user01   03/10 10:05:00  00:30:00   1            ERR -   -   0  127
1334964    features   NM QUE user01   -               00:30:00   1            QUE -   -   0  127
1334965    features   NM RUN user01   03/10 10:07:00  00:30:00   1            RUN -   -   0  127
13349666   features   NM EXT user01   03/10 10:08:00  00:30:00   1            EXT 5   0   0  127
"""

LONG_FORM = """\
JOB_ID       JOB_NAME   STATUS   PROJECT  RSCGROUP     START_DATE           ELAPSE    EXIT_CODE
2001         features   END      gz00     share-short  2025/03/10 10:00:00  00:10:00  0
2002         features   END      gz00     share-short  2025/03/10 10:00:00  00:10:00  137
2003         ingest     CANCEL   gz00     share-debug  -                    -         -
2004         ingest     ERROR    gz00     share-debug  -                    -         -
2005         ingest     REJECT   gz00     share-debug  -                    -         -
2006         ingest     QUEUED   gz00     share-debug  -                    -         -
2007         ingest     RUNNING  gz00     share-debug  2025/03/10 10:00:00  00:01:00  -
"""

NO_HEADER = "3001 features END\n3002 ingest CANCEL\n"


@pytest.mark.parametrize(
    "text, job_id, expected",
    [
        (SHORT_FORM, "1334958", "success"),
        (SHORT_FORM, "1334959", "failed"),  # nonzero exit code
        (SHORT_FORM, "1334960", "failed"),  # nonzero PJM code (e.g. elapse limit)
        (SHORT_FORM, "1334961", "failed"),  # CCL
        (SHORT_FORM, "1334962", "failed"),  # RJT
        (SHORT_FORM, "1334963", "failed"),  # ERR
        (SHORT_FORM, "1334964", "running"),  # QUE
        (SHORT_FORM, "1334965", "running"),  # RUN
        (SHORT_FORM, "1334966", "running"),  # absent (only a longer id shares the prefix)
        (SHORT_FORM, "13349666", "failed"),
        (LONG_FORM, "2001", "success"),
        (LONG_FORM, "2002", "failed"),
        (LONG_FORM, "2003", "failed"),
        (LONG_FORM, "2004", "failed"),
        (LONG_FORM, "2005", "failed"),
        (LONG_FORM, "2006", "running"),
        (LONG_FORM, "2007", "running"),
        (LONG_FORM, "9999", "running"),
        (NO_HEADER, "3001", "success"),
        (NO_HEADER, "3002", "failed"),
        ("", "1", "running"),
    ],
)
def test_status_from_history(text, job_id, expected):
    assert pjm_status.classify(*pjm_status.parse_history(text, job_id)) == expected


def test_parse_history_reads_codes_after_dates():
    assert pjm_status.parse_history(SHORT_FORM, "1334960") == ("EXT", 0, 2)
    assert pjm_status.parse_history(LONG_FORM, "2002") == ("END", 137, None)


def run_status(job_id: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(WISTERIA / "pjm_status.py"), job_id], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("form", ["short", "long"])
def test_status_script_against_standin_pjstat(tmp_path, form):
    jobs = tmp_path / "pjm" / "jobs"
    jobs.mkdir(parents=True)
    states = {"11": ("EXT", 0), "12": ("EXT", 4), "13": ("CCL", None), "14": ("RJT", None),
              "15": ("ERR", None), "16": ("RUN", None), "17": ("QUE", None)}
    for job_id, (state, code) in states.items():
        (jobs / f"{job_id}.json").write_text(json.dumps({"name": "features", "state": state, "ec": code}))
    env = standin_env(tmp_path / "pjm", PJM_STANDIN_FORMAT=form)
    expected = {"11": "success", "12": "failed", "13": "failed", "14": "failed", "15": "failed",
                "16": "running", "17": "running", "99": "running"}
    for job_id, word in expected.items():
        done = run_status(job_id, env)
        assert (done.returncode, done.stdout) == (0, word + "\n"), (job_id, done.stderr)


def test_status_counts_a_failing_pjstat_as_running(tmp_path):
    done = run_status("5", dict(os.environ, BRAINLLM_PJSTAT="false"))
    assert (done.returncode, done.stdout) == (0, "running\n")
    assert "exited with 1" in done.stderr


# ---------------------------------------------------------------- job script template


def render_jobscript(tmp_path: Path, exec_job: str) -> Path:
    template = (WISTERIA / "jobscript.sh").read_text()
    script = tmp_path / "job.sh"
    script.write_text(template.format(properties=json.dumps({"rule": "features"}), exec_job=exec_job))
    return script


@pytest.mark.parametrize(
    "modules, module_exit, expected_calls, expected_rc",
    [
        ("aquarius cuda/12.2", 0, ["load aquarius cuda/12.2"], 0),
        (None, 0, ["load aquarius cuda"], 0),  # default when unset
        ("", 0, [], 0),  # empty: load nothing
        ("aquarius cuda/99", 1, ["load aquarius cuda/99"], 1),  # failed load stops the job
    ],
)
def test_jobscript_loads_modules_then_runs(tmp_path, modules, module_exit, expected_calls, expected_rc):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "module_calls"
    fake_module = bin_dir / "module"
    fake_module.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit {module_exit}\n')
    fake_module.chmod(0o755)
    script = render_jobscript(tmp_path, f"echo $HDF5_USE_FILE_LOCKING > {tmp_path / 'ran'}")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("BRAINLLM_PJM_MODULES", None)
    if modules is not None:
        env["BRAINLLM_PJM_MODULES"] = modules
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == expected_rc, done.stderr
    assert (calls.read_text().splitlines() if calls.exists() else []) == expected_calls
    if expected_rc == 0:
        assert (tmp_path / "ran").read_text() == "FALSE\n"
    else:
        assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------- Wisteria profile end to end


def snakemake_wisteria(workdir: Path, state_dir: Path, *args: str, timeout: int = 0, **env_extra: str):
    env = standin_env(state_dir, BRAINLLM_PJM_GROUP="gz00", **env_extra)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(MINI_SNAKEFILE),
               "--profile", str(WISTERIA), "--seconds-between-status-checks", "1", "--latency-wait", "2", *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout or HANG_GUARD_S)


def by_rule(records: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for record in records:
        opts = options(record["argv"][:-1])
        grouped.setdefault(opts["-N"][0], []).append(opts)
    return grouped


@pytest.fixture(scope="module")
def wisteria_run(tmp_path_factory):
    """The miniature DAG plus the failing rule, with --keep-going, through the stand-in PJM."""
    workdir = tmp_path_factory.mktemp("wisteria")
    state_dir = workdir / "pjm"
    done = snakemake_wisteria(workdir, state_dir, "--keep-going", "all", "results/broken/never.txt")
    return workdir, state_dir, done


def test_wisteria_runs_the_dag(wisteria_run):
    workdir, _, done = wisteria_run
    assert (workdir / "results/contrastive/adapter.txt").read_text() == "adapter\n", done.stderr[-3000:]
    assert (workdir / "results/features/lighthouse.txt").read_text().split()[-1] == "1"  # gpu resource seen by the job


def test_wisteria_pjsub_options_per_rule(wisteria_run):
    workdir, state_dir, _ = wisteria_run
    submitted = by_rule(pjsub_records(state_dir))
    expected = {
        "features": ["rscgrp=share", "gpu=1", "elapse=08:00:00"],
        "encoding": ["rscgrp=share-short", "gpu=1", "elapse=02:00:00"],
        "contrastive_lora": ["rscgrp=share", "gpu=1", "elapse=08:00:00"],
        "ingest": ["rscgrp=share-short", "gpu=1", "elapse=01:00:00"],
        "broken": ["rscgrp=share-debug", "gpu=1", "elapse=00:30:00"],
    }
    assert sorted(submitted) == sorted(expected)  # demo_dataset and all are local rules
    assert len(submitted["features"]) == 2
    for rule, limits in expected.items():
        for opts in submitted[rule]:
            assert opts["-L"] == limits, rule
            assert opts["-g"] == ["gz00"]
            assert opts["-o"][0].startswith(str(workdir / "results/logs/")) and opts["-o"][0].endswith(".pjm.out")
    pjm_out = (workdir / "results/logs/ingest/ingest.log.pjm.out").read_text()
    assert "brainllm: PJM job" in pjm_out and "Finished jobid" in pjm_out


def test_wisteria_failed_job_is_reported_and_retried(wisteria_run):
    _, state_dir, done = wisteria_run
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Error in rule broken" in output
    assert "results/logs/broken/broken.log" in output
    assert "this rule fails on purpose" in output  # show-failed-logs
    assert len(by_rule(pjsub_records(state_dir))["broken"]) == 2  # retries: 1
    assert "Error in rule" not in output.replace("Error in rule broken", "")


def test_wisteria_cancelled_and_rejected_jobs_fail(tmp_path):
    """Jobs ending CANCEL / REJECT (long-word pjstat) are failures; independent jobs go on."""
    done = snakemake_wisteria(
        tmp_path, tmp_path / "pjm", "--retries", "0", "--keep-going",
        "results/ingest/responses.txt", "results/features/lighthouse.txt", "results/slow/done.txt",
        PJM_STANDIN_CANCEL="ingest", PJM_STANDIN_REJECT="features", PJM_STANDIN_FORMAT="long",
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Error in rule ingest" in output and "Error in rule features" in output
    assert not (tmp_path / "results/ingest/responses.txt").exists()
    assert not (tmp_path / "results/features/lighthouse.txt").exists()
    assert (tmp_path / "results/slow/done.txt").exists()


def test_wisteria_interrupt_cancels_jobs_with_pjdel(tmp_path):
    """Ctrl-C while a job runs cancels it with pjdel. Waits on events (the job reaching RUN,
    snakemake exiting), not on time: the job sleeps far longer than any machine needs to
    get there, and HANG_GUARD_S only stops a hung run."""
    env = standin_env(tmp_path / "pjm", BRAINLLM_PJM_GROUP="gz00")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(MINI_SNAKEFILE), "--profile", str(WISTERIA),
               "--seconds-between-status-checks", "1", "results/slow/done.txt", "--config", f"slow_seconds={HANG_GUARD_S}"]
    # SIGINT back to its default in the child: a test run started in the background of a
    # non-interactive shell inherits it ignored, and snakemake would never see Ctrl-C
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    guard = time.monotonic() + HANG_GUARD_S
    while process.poll() is None and not any(
        json.loads(p.read_text()).get("state") == "RUN" for p in (tmp_path / "pjm" / "jobs").glob("*.json")
    ):
        assert time.monotonic() < guard, "the job never started (hang guard)"
        time.sleep(0.3)
    assert process.poll() is None, process.communicate()[0][-3000:]
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=HANG_GUARD_S)
    (record,) = pjsub_records(tmp_path / "pjm")
    cancelled = [json.loads(line) for line in (tmp_path / "pjm" / "pjdel.jsonl").read_text().splitlines()]
    assert cancelled == [{"argv": [str(record["jobid"])]}], output[-3000:]
    job = json.loads((tmp_path / "pjm" / "jobs" / f"{record['jobid']}.json").read_text())
    assert job["state"] == "CCL"
    assert not (tmp_path / "results/slow/done.txt").exists()


@pytest.mark.workflow
def test_wisteria_profile_runs_the_demo_ingest_and_preprocess(demo_run, tmp_path):
    """The real DAG's ingest and preprocess jobs through `--profile profiles/wisteria` (as a
    user types it, from the working directory), on the session's demo dataset; the outputs
    equal those of the plain local run."""
    workdir = make_workdir(tmp_path / "wd")
    shutil.copytree(demo_run / "resources", workdir / "resources")  # keeps mtimes: the dataset is up to date
    targets = [f"results/preprocess/sub-{subject}/responses.h5" for subject in ("UTS01", "UTS02")]
    env = standin_env(tmp_path / "pjm", BRAINLLM_PJM_GROUP="gz00", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "snakemake", "--profile", "profiles/wisteria",
               "--seconds-between-status-checks", "1", "--latency-wait", "3", *targets]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    submitted = by_rule(pjsub_records(tmp_path / "pjm"))
    assert sorted(submitted) == ["ingest", "preprocess"]
    for opts in submitted["ingest"] + submitted["preprocess"]:
        assert opts["-L"] == ["rscgrp=share-short", "gpu=1", "elapse=01:00:00"]
    assert len(submitted["preprocess"]) == 2
    for relative in targets:
        with h5py.File(workdir / relative, "r") as cluster, h5py.File(demo_run / relative, "r") as local:
            assert sorted(cluster) == sorted(local)
            for story in local:
                np.testing.assert_array_equal(cluster[story]["data"][()], local[story]["data"][()])


# ---------------------------------------------------------------- conda environments

# pyproject name -> names accepted for it in an environment file (conda or pip)
CONDA_NAMES = {"torch": {"torch", "pytorch", "pytorch-cpu", "pytorch-gpu"}, "matplotlib": {"matplotlib", "matplotlib-base"},
               "mne": {"mne", "mne-base"}, "snakemake": {"snakemake", "snakemake-minimal"}, "xxhash": {"xxhash", "python-xxhash"}}
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$")


def parse_requirement(text: str) -> tuple[str, str | None]:
    """'name[extra]>=1.2,<2' -> ('name', '1.2'); the lower bound or None."""
    name, _, spec = REQUIREMENT.match(text).groups()
    bound = re.search(r">=\s*([0-9][0-9.]*)", spec)
    return name.lower().replace("_", "-"), bound.group(1) if bound else None


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def env_packages(env: dict) -> dict[str, str | None]:
    packages = {}
    for item in env["dependencies"]:
        for text in item["pip"] if isinstance(item, dict) else [item]:
            name, bound = parse_requirement(text)
            packages[name] = bound
    return packages


@pytest.mark.parametrize("env_name, extras", [("cpu", []), ("gpu", ["gpu"])])
def test_conda_env_matches_pyproject(env_name, extras):
    env = yaml.safe_load((REPO / "envs" / f"{env_name}.yaml").read_text())
    assert env["channels"][0] == "conda-forge"
    packages = env_packages(env)
    assert packages["python"] is not None and tuple(map(int, packages["python"].split("."))) >= (3, 11)
    assert "pip" in packages
    project = pyproject()["project"]
    required = list(project["dependencies"])
    for extra in extras:
        required += project["optional-dependencies"][extra]
    for requirement in required:
        name, bound = parse_requirement(requirement)
        present = CONDA_NAMES.get(name, {name}) & set(packages)
        assert present, f"envs/{env_name}.yaml lacks {name}"
        assert packages[present.pop()] == bound, f"envs/{env_name}.yaml: {name} lower bound differs from pyproject"
    deploy = REPO / "envs" / f"{env_name}.post-deploy.sh"
    assert os.access(deploy, os.X_OK) and "--no-deps --editable" in deploy.read_text()


def test_rule_conda_directives_point_to_env_files():
    """Every `conda:` names envs/cpu.yaml or envs/gpu.yaml; GPU-heavy rules use the GPU one."""
    rule_block = re.compile(r"^rule (\w+):(.*?)(?=^rule |^ruleorder|\Z)", re.MULTILINE | re.DOTALL)
    conda_path = re.compile(r"^\s*conda:\s*\n?\s*[\"']([^\"']+)[\"']", re.MULTILINE)
    checked, gpu_env_rules = 0, set()
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for rule, body in rule_block.findall(smk.read_text()):
            for relative in conda_path.findall(body):
                checked += 1
                env_file = (smk.parent / relative).resolve()
                assert env_file.is_file(), f"{smk.name}: rule {rule}: conda env {relative} does not exist"
                assert env_file.parent == REPO / "envs", f"{smk.name}: rule {rule}: {relative} is outside envs/"
                if rule in GPU_RULES:
                    assert env_file.name == "gpu.yaml", f"{smk.name}: GPU rule {rule} uses {relative}"
                if env_file.name == "gpu.yaml":
                    gpu_env_rules.add(rule)
    assert checked > 0
    # every rule in the GPU environment is routed to a GPU by the profiles (the demo's tiny story LM trains on CPU)
    assert gpu_env_rules - {"story_lm"} <= set(GPU_RULES), gpu_env_rules - set(GPU_RULES)


def test_local_runs_never_hold_more_threads_than_cores(tmp_path):
    """The installed Snakemake keeps local jobs within --cores (9.10–9.16 started a lone ready job without
    counting it, so later jobs ran beyond the cores: several LLM jobs at once, out of memory on a workstation)."""
    (tmp_path / "stamp.py").write_text("import sys, time\nopen(sys.argv[1], 'a').write(f'{time.time()}\\n')\n")
    stamp = f"'{sys.executable}' stamp.py {{output}}"
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: expand("out{i}.txt", i=range(4))\n'
        'rule first:\n    output: "first.txt"\n    shell: "touch {output}"\n'
        f'rule parallel:\n    input: "first.txt"\n    output: "out{{i}}.txt"\n    threads: 1\n    shell: "{stamp}; sleep 1; {stamp}"\n'
    )
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--scheduler", "greedy", "-q"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    spans = [tuple(map(float, (tmp_path / f"out{i}.txt").read_text().split())) for i in range(4)]
    most = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most <= 2, f"{most} one-thread jobs ran at once with --cores 2"
