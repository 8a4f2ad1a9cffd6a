#!/bin/bash
# properties = {properties}
# brainllm job on Wisteria/BDEC-01 Aquarius, written by Snakemake from profiles/wisteria/jobscript.sh.
# Braces are doubled because Snakemake fills this template with str.format.

# Modules: BRAINLLM_PJM_MODULES from the submitting environment (pjsub -X); empty = load none.
modules="${{BRAINLLM_PJM_MODULES-aquarius cuda}}"
if [ -n "$modules" ]; then
    if ! type module >/dev/null 2>&1 && [ -f /etc/profile.d/modules.sh ]; then
        . /etc/profile.d/modules.sh
    fi
    module load $modules || {{ echo "brainllm: 'module load $modules' failed" >&2; exit 1; }}
fi

# Shared HDF5 stores on Lustre are read by many jobs at once: no file locks.
export HDF5_USE_FILE_LOCKING=FALSE
# Compute nodes reach no model hub: load models from local paths and caches only.
export HF_HUB_OFFLINE="${{HF_HUB_OFFLINE-1}}"
echo "brainllm: PJM job ${{PJM_JOBID-?}} on $(hostname) started $(date '+%F %T')" >&2

{exec_job}
