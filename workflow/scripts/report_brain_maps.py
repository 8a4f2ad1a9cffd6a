"""Snakemake adapter: r map and best-layer map mosaics of one subject and model (rule report_brain_maps)."""

from brainllm.io import rule_logging
from brainllm.report import plot_brain_maps

with rule_logging(snakemake.log[0]):
    output = snakemake.output
    plot_brain_maps(
        snakemake.input.layers,
        snakemake.input.scores,
        snakemake.input.r_maps,
        snakemake.input.bestlayer,
        snakemake.input.mean,
        snakemake.input.mask,
        r_outputs={"png": output.r_png, "svg": output.r_svg, "tsv": output.r_tsv},
        layer_outputs={"png": output.layer_png, "svg": output.layer_svg, "tsv": output.layer_tsv},
        n_slices=snakemake.params.slices,
        dpi=snakemake.params.dpi,
    )
