# Threads of the jobs run on this machine. The cluster profiles set their own per rule.
import os

_CORES = workflow.resource_settings.cores  # None without --cores (dry runs, --report); huge with --jobs unlimited
# A job every other job waits for (the demo dataset) takes every core.
ALL_CORES = max(1, min(_CORES, os.cpu_count() or 1)) if isinstance(_CORES, int) else 1
# A torch job (an LLM, a vision model): half the cores, so two such jobs run side by side
# (each spends seconds single-threaded loading and writing).
TORCH_JOB_THREADS = max(1, ALL_CORES // 2)
