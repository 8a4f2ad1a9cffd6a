#!/usr/bin/env bash
# Run by Snakemake inside the new environment: install the brainllm package from this
# repository (editable, so the rules see code changes; dependencies come from the YAML).
set -euo pipefail
python -m pip install --no-deps --editable "$(cd "$(dirname "$0")/.." && pwd)"
