# brainllm: brain-activity encoding and decoding models from large language models.
# Run the embedded demo:  snakemake --cores all       (see README.md)
#
# The config is the user's (--configfile a.yaml [b.yaml …], later files update earlier
# ones; --config key=value on top) or, when no --configfile is given, config/config.yaml:
# never a merge of the two. Defaults come from the schema; brainllm.configuration checks
# what the schema cannot before any job runs.

from snakemake.utils import min_version

from brainllm import configuration as brainllm_configuration

min_version("9.17")  # 9.10–9.16 run more local jobs than --cores


if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


brainllm_configuration.check_files(workflow.configfiles)
brainllm_configuration.prepare(config, workflow.config_settings.config)
brainllm_configuration.validate(config)
brainllm_configuration.finish(
    config, check_inputs=workflow.is_main_process and not config["demo"]["generate"]
)
brainllm_configuration.canonical_order(config)  # params compare equal whatever the YAML's key order


include: "workflow/rules/threads.smk"


if brainllm_configuration.is_image_dataset(config):  # image stimuli: the visual stages alone

    include: "workflow/rules/visual_common.smk"
    include: "workflow/rules/visual.smk"

else:

    include: "workflow/rules/common.smk"
    include: "workflow/rules/demo.smk"
    include: "workflow/rules/ingest.smk"
    include: "workflow/rules/preprocess.smk"
    include: "workflow/rules/features.smk"
    include: "workflow/rules/contrastive.smk"
    include: "workflow/rules/report.smk"
    include: "workflow/rules/align.smk"
    include: "workflow/rules/encoding.smk"
    include: "workflow/rules/decoding.smk"
    include: "workflow/rules/group.smk"
    include: "workflow/rules/generation.smk"
    include: "workflow/rules/eeg.smk"
    include: "workflow/rules/derivatives.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        visual_targets() if brainllm_configuration.is_image_dataset(config) else final_targets(),
    default_target: True
