# results/ as a BIDS derivative: dataset_description.json (GeneratedBy with the version
# and the config hash, SourceDatasets) and one JSON sidecar per NIfTI map
# (brainllm.derivatives; docs/outputs.md, "BIDS derivative").


rule bids_derivative:
    input:
        maps=lambda wildcards: list(derivative_maps()),
        summaries=lambda wildcards: [info["summary"] for info in derivative_maps().values() if info.get("summary")],
    output:
        description=f"{RESULTS}/dataset_description.json",
        bidsignore=f"{RESULTS}/.bidsignore",
        sidecars=[str(brainllm_derivatives.sidecar_path(path)) for path in derivative_maps()],
    params:
        maps=lambda wildcards: derivative_maps(),
        config=config,
        results=lambda wildcards, output: os.path.dirname(output.description),
    log:
        f"{RESULTS}/logs/bids_derivative.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/bids_derivative.py"
