# brainllm: brain-activity encoding and decoding models from large language models.
# Run the embedded demo:  snakemake --cores all       (see README.md)

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/contrastive.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/encoding.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        final_targets(),
    default_target: True
