# The embedded demo dataset: a ds003020-style replica and a BIDS copy of the same
# simulated recordings, plus the planted ground truth (written last, the rule's output);
# beside them the Japanese demo (bids_ja/, config/demo_ja.yaml) and its ground truth.


rule demo_dataset:
    output:
        os.path.join(config["demo"]["out_dir"], "ground_truth.json"),
        os.path.join(config["demo"]["out_dir"], "ground_truth_ja.json"),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
        seed=config["demo"]["seed"],
    log:
        f"{RESULTS}/logs/demo_dataset.log",
    threads: ALL_CORES  # every other job waits for it
    resources:
        mem_mb=2000,
        runtime=20,
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/demo_dataset.py"
