# Brain → text (brainllm.generation, brainllm.story_lm); outputs in docs/outputs.md.
# `story_lm`: the demo's generator, a word-level GPT-2 trained on the training stories
# only (used when generation.llm.source is workflow:story-lm). `generation_brain_prompt`:
# per subject, a brain decoder writes prompt vectors of the LLM (Ye et al. 2023), trained
# on the training stories, scored on the test stories against permuted-brain, text-only
# and LLM-only controls. `generation_brain_prompt_eeg`: the same from each EEG subject's
# word-locked windows (when the eeg section is present too).


rule story_lm:
    input:
        words=[words_tsv(story) for story in story_lm_stories()],
    output:
        weights=f"{STORY_LM_DIR}/model.safetensors",
    params:
        stories=story_lm_stories(),
        settings=GENERATION.get("story_lm", {}),
    log:
        f"{RESULTS}/logs/generation/story_lm.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/gpu.yaml"
    priority: UNBLOCKS
    script:
        "../scripts/story_lm.py"


rule generation_brain_prompt:
    input:
        responses=preprocessed("{subject}"),
        words=[words_tsv(story) for story in STORIES],
        llm=generation_llm_files(),
    output:
        texts=generation_file("{subject}", "texts.tsv"),
        comparisons=generation_file("{subject}", "comparisons.tsv"),
        curves=generation_file("{subject}", "curves.tsv"),
        decoder=generation_file("{subject}", "decoder.safetensors"),
        control=generation_file("{subject}", "control.safetensors"),
        scores=generation_file("{subject}", "scores.json"),
    params:
        llm=generation_llm(),
        settings=GENERATION.get("brain_prompt", {}),
        stories=STORIES,
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
    log:
        f"{RESULTS}/logs/generation/sub-{{subject}}_brain_prompt.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        "../../envs/gpu.yaml"
    priority: LONG_JOB
    script:
        "../scripts/generation_brain_prompt.py"


rule generation_brain_prompt_eeg:
    input:
        eeg=f"{RESULTS}/eeg/preprocess/sub-{{subject}}/eeg.h5",
        words=[words_tsv(story) for story in STORIES],
        llm=generation_llm_files(),
    output:
        texts=eeg_generation_file("{subject}", "texts.tsv"),
        comparisons=eeg_generation_file("{subject}", "comparisons.tsv"),
        curves=eeg_generation_file("{subject}", "curves.tsv"),
        decoder=eeg_generation_file("{subject}", "decoder.safetensors"),
        control=eeg_generation_file("{subject}", "control.safetensors"),
        scores=eeg_generation_file("{subject}", "scores.json"),
    params:
        llm=generation_llm(),
        settings=EEG_BRAIN_PROMPT,
        eeg=EEG_GENERATION,
        stories=STORIES,
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
    log:
        f"{RESULTS}/logs/generation/sub-{{subject}}_eeg_brain_prompt.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        "../../envs/gpu.yaml"
    priority: LONG_JOB
    script:
        "../scripts/generation_brain_prompt.py"


rule report_generation:
    input:
        scores=lambda wildcards: generation_targets() + eeg_generation_targets(),
        comparisons=lambda wildcards: generation_targets("comparisons.tsv") + eeg_generation_targets("comparisons.tsv"),
        texts=lambda wildcards: generation_targets("texts.tsv") + eeg_generation_targets("texts.tsv"),
    output:
        **report_figure(
            f"{REPORT_DIR}/generation/brain_prompt",
            "../report/generation_brain_prompt.rst",
            "Generation",
            "All subjects",
            {"figure": "brain-prompted generation"},
        ),
        examples=report(
            f"{REPORT_DIR}/generation/brain_prompt_examples.tsv",
            caption="../report/generation_examples.rst",
            category="Generation",
            subcategory="All subjects",
            labels={"table": "generated vs heard text"},
        ),
    params:
        dpi=REPORT["dpi"],
        modalities=lambda wildcards: ["fMRI"] * len(generation_targets()) + ["EEG"] * len(eeg_generation_targets()),
    log:
        f"{RESULTS}/logs/report/generation.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_generation.py"


REPORT_TARGETS.append(report_generation_figures)


rule generation_beam_search:
    input:
        responses=preprocessed("{subject}"),
        words=[words_tsv(story) for story in STORIES],
        aligned=aligned_features("{subject}", BEAM_SEARCH_MODEL),
        layers=encoding_file("{subject}", BEAM_SEARCH_MODEL, "layers.tsv"),
        manifests=[feature_manifest(BEAM_SEARCH_MODEL, story) for story in DATASET["train_stories"]],
        llm=generation_llm_files(),
    output:
        texts=beam_search_file("{subject}", "texts.tsv"),
        scores=beam_search_file("{subject}", "scores.json"),
    params:
        model_cfg=MODELS[BEAM_SEARCH_MODEL] if BEAM_SEARCH is not None else {},
        llm=generation_llm(),
        encoding=ENCODING,
        settings=BEAM_SEARCH or {},
        stories=STORIES,
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
    log:
        f"{RESULTS}/logs/generation/sub-{{subject}}_beam_search.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=480,
    conda:
        "../../envs/gpu.yaml"
    priority: LONG_JOB
    script:
        "../scripts/generation_beam_search.py"


rule report_beam_search:
    input:
        scores=lambda wildcards: beam_search_targets(),
    output:
        report(
            f"{REPORT_DIR}/generation/beam_search.tsv",
            caption="../report/generation_beam_search.rst",
            category="Generation",
            subcategory="All subjects",
            labels={"table": "encoding-guided beam search vs its null"},
        ),
    log:
        f"{RESULTS}/logs/report/generation_beam_search.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_beam_search.py"
