"""Throughput of the generative reconstruction route (brainllm.reconstruction) on a GPU.

N predicted CLIP image embeddings (here: the pipeline's own embeddings of N random images,
plus noise, standing in for ridge predictions) are turned into images by a local
``StableUnCLIPImg2ImgPipeline`` through ``generate_from_embeddings``: from noise, and from
a low-level start image (a 16×16 grayscale "linear reconstruction", noised to ``--strength``).
One warm-up batch is not timed. Prints images/s for each and writes ``gpu_reconstruction.json``
to the results directory.

    python benchmarks/gpu_reconstruction.py --pipeline /path/to/stable-diffusion-2-1-unclip --results out/

``--tiny`` builds the tiny random-weight pipeline of the tests instead and runs anywhere
(``--device cpu``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainllm.reconstruction import build_tiny_unclip_pipeline, clip_image_embeddings, generate_from_embeddings, load_unclip_pipeline


def _clock(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", help="local StableUnCLIPImg2ImgPipeline directory (safetensors)")
    parser.add_argument("--tiny", action="store_true", help="build and time the tiny random pipeline of the tests")
    parser.add_argument("--results", default=None, help="directory for gpu_reconstruction.json")
    parser.add_argument("--n", type=int, default=16, help="predicted embeddings to turn into images")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--strength", type=float, default=0.75)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float16 / bfloat16 / float32 (default: float16 on cuda)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if bool(args.tiny) == bool(args.pipeline):
        parser.error("give exactly one of --pipeline DIR and --tiny")
    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    with tempfile.TemporaryDirectory() as tmp:
        source = build_tiny_unclip_pipeline(Path(tmp) / "tiny_unclip", seed=args.seed) if args.tiny else Path(args.pipeline)
        t0 = time.perf_counter()
        pipe = load_unclip_pipeline(source, device=args.device, dtype=dtype)
        load_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (args.n, 64, 64, 3), dtype=np.uint8)
    embeds = clip_image_embeddings(pipe, images)
    embeds = embeds + 0.3 * embeds.std() * rng.standard_normal(embeds.shape)  # a ridge prediction is not exact
    starts = rng.random((args.n, 16, 16))
    common = dict(steps=args.steps, guidance_scale=args.guidance, seed=args.seed, batch_size=args.batch_size)
    warm = min(args.batch_size, args.n)
    generate_from_embeddings(pipe, embeds[:warm], **common)
    result = {"device": args.device, "dtype": dtype, "pipeline": "tiny" if args.tiny else str(args.pipeline), "n": args.n,
              "steps": args.steps, "guidance_scale": args.guidance, "batch_size": args.batch_size, "load_s": load_s}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    for name, extra in (("from_noise", {}), ("low_level_start", {"init_images": starts, "strength": args.strength})):
        t = _clock(args.device)
        out = generate_from_embeddings(pipe, embeds, **common, **extra)
        seconds = _clock(args.device) - t
        result[name] = {"seconds": seconds, "images_per_s": args.n / seconds, "image_shape": list(out.shape[1:])}
        print(f"{name}: {args.n} images {out.shape[1]}x{out.shape[2]} in {seconds:.2f} s = {args.n / seconds:.2f} images/s "
              f"({args.steps} steps{f', strength {args.strength}' if extra else ''}, guidance {args.guidance}, "
              f"batch {args.batch_size}, {dtype} on {result.get('gpu', args.device)})")
    if args.device.startswith("cuda"):
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory {result['peak_gpu_memory_gib']:.2f} GiB")
    if args.results:
        out_dir = Path(args.results)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "gpu_reconstruction.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
