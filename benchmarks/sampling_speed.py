#!/usr/bin/env python3
"""How fast is the hand-written sampling loop? Against StableDiffusionPipeline, on the same parts, in one run.

Prints, for ``sdlearn.sampling.text_to_image`` (the loop of notebook 06) and for diffusers'
``StableDiffusionPipeline`` built on the very same components: seconds per image, U-Net steps
per second, peak memory, and the ratio hand / pipeline (the goal: at most 1.03). Each is timed
after warm-up runs, over several repeats taken in turns (hand, pipeline, hand, ...) so that a
machine that slows down or speeds up affects both alike; the median is reported, and the ratio
is the median of the ratios of runs taken back to back.

    python benchmarks/sampling_speed.py --device cpu --model bundled
    python benchmarks/sampling_speed.py --device cuda --model sd15-replica --height 512 --width 512 \\
        --steps 50 --dtype fp16 --lesson --memory

``--lesson`` measures what each speed-up buys, one at a time and then all together (the "fast
path"), against the pipeline's defaults: float32 instead of float16, the classic attention
processor (``AttnProcessor``) instead of SDPA (``AttnProcessor2_0``), ``channels_last``,
``torch.compile``; for each, the speed-up and how far its image is from the pipeline's.
``--memory`` measures what attention slicing saves in one U-Net call and what VAE tiling saves
in one decode at twice the image size (or ``--memory-size``).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` (tensors only, reset before each
measurement). On a CPU, the peak resident set size of the whole process (weights, Python and
all): on Linux the kernel's high-water mark ``VmHWM``, reset before each measurement by writing
5 to ``/proc/self/clear_refs``; elsewhere ``resource.getrusage``'s ``ru_maxrss``, the peak since
the process started, which cannot be reset (the table says which).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:        # run from a checkout without installing sdlearn
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # the models it uses are local; never reach for the hub

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402

from sdlearn import models, sampling  # noqa: E402
from sdlearn.device import machine_lines, resolve  # noqa: E402

PROMPT = "a big red circle on the left"
RATIO_GOAL = 1.03          # hand / pipeline, seconds per image
FAST_PATH_GOAL = 1.3       # pipeline defaults / fast path
GiB = 2**30


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _clear_refs_works() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return Path("/proc/self/status").is_file()
    except OSError:
        return False


class PeakMemory:
    """Peak memory during a block: CUDA tensors, or the CPU process's resident set size."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "torch.cuda.max_memory_allocated"
        elif _clear_refs_works():
            self.kind = "peak RSS of the process (VmHWM, reset per run)"
        else:
            self.kind = "peak RSS of the process since start (ru_maxrss, cannot be reset)"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif "VmHWM" in self.kind:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def read(self) -> int:
        """Bytes."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if "VmHWM" in self.kind:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024   # bytes on macOS, KiB on Linux


@dataclasses.dataclass
class Timing:
    name: str
    seconds: list[float]          # one per timed repeat
    peak_bytes: int
    image: torch.Tensor           # [B, 3, H, W] in [-1, 1], float32 on the CPU: the last run's
    unet_calls: int
    batch: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def per_image(self) -> float:
        return self.median / self.batch

    @property
    def steps_per_second(self) -> float:
        return self.unet_calls / self.median


def paired_ratio(a: Timing, b: Timing) -> float:
    """The median over repeats of a's time / b's time in the same turn.

    Each pair ran back to back, so a machine that drifts (this course's CI machine slows down by
    a third within minutes) changes both alike, and the ratio of each pair cancels it; a ratio of
    the two medians does not, when the slow repeats fall unevenly.
    """
    return statistics.median(x / y for x, y in zip(a.seconds, b.seconds, strict=True))


def time_in_turns(runs: dict[str, Callable[[], torch.Tensor]], *, device: torch.device, warmup: int, repeats: int,
                  memory: PeakMemory, unet_calls: int, batch: int) -> dict[str, Timing]:
    """Warm each run up, then time them in turns, ``repeats`` times each; peak memory is the max over repeats."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    seconds = {name: [] for name in runs}
    peaks = dict.fromkeys(runs, 0)
    images: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize(device)
            memory.reset()
            began = time.perf_counter()
            out = run()
            synchronize(device)
            seconds[name].append(time.perf_counter() - began)
            peaks[name] = max(peaks[name], memory.read())
            images[name] = out
    return {name: Timing(name, seconds[name], peaks[name], images[name].float().cpu(), unet_calls, batch)
            for name in runs}


# --------------------------------------------------------------------------------------
# The two loops
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setting:
    steps: int
    height: int
    width: int
    guidance: float
    batch: int
    seed: int


def hand_run(comp: models.SDComponents, s: Setting) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        generator = torch.Generator().manual_seed(s.seed)
        # decode as the SD 1.x pipeline does (in the VAE's dtype), so both do the same work; the NaN guard stays on
        return sampling.text_to_image(comp, [PROMPT] * s.batch, num_inference_steps=s.steps, height=s.height,
                                      width=s.width, guidance_scale=s.guidance, generator=generator,
                                      upcast_vae=False).images
    return run


def pipeline_run(pipe, s: Setting) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        generator = torch.Generator().manual_seed(s.seed)
        out = pipe([PROMPT] * s.batch, num_inference_steps=s.steps, height=s.height, width=s.width,
                   guidance_scale=s.guidance, generator=generator, output_type="pt").images
        return out * 2 - 1                                             # [0, 1] -> [-1, 1], like the hand loop
    return run


def unet_calls_per_image(comp: models.SDComponents, steps: int) -> int:
    scheduler = sampling.fresh_scheduler(comp.scheduler)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)                                    # PNDM: steps + 1


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def fmt_bytes(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB"


def table(timings: list[Timing]) -> str:
    rows = [("", "s / image", "U-Net steps / s", "peak memory", "repeats (s)")]
    for t in timings:
        rows.append((t.name, f"{t.per_image:.3f}", f"{t.steps_per_second:.1f}", fmt_bytes(t.peak_bytes),
                     " ".join(f"{x:.3f}" for x in t.seconds)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


# --------------------------------------------------------------------------------------
# The speed lesson and the memory lesson
# --------------------------------------------------------------------------------------


def _variant(comp: models.SDComponents, *, dtype: torch.dtype | None = None, classic_attention: bool = False,
             channels_last: bool = False, compile_mode: str | None = None) -> models.SDComponents:
    """A copy of ``comp`` with the given changes (the original is left as it was)."""
    unet = copy.deepcopy(comp.unet)
    text_encoder, vae = comp.text_encoder, comp.vae
    if dtype is not None and dtype != comp.dtype:
        unet = unet.to(dtype)
        text_encoder = copy.deepcopy(comp.text_encoder).to(dtype)
        vae = copy.deepcopy(comp.vae).to(dtype)
    if classic_attention:
        unet.set_attn_processor(AttnProcessor())
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        unet = torch.compile(unet, mode=compile_mode)
    return dataclasses.replace(comp, unet=unet, text_encoder=text_encoder, vae=vae, dtype=dtype or comp.dtype,
                               pipeline=None)


def speed_lesson(comp, pipe, s: Setting, reference: Timing, *, device, warmup, repeats, memory, compile_mode,
                 calls, tolerance: float) -> None:
    """Each variant is timed in turns with the pipeline's defaults, so both see the same machine.

    Two speed-ups per variant: against the pipeline's turns in the same rows, and against the
    pipeline's timing taken before any variant ran (``reference``). They should agree; where they
    do not (after a ``torch.compile``, a CPU's pipeline turns were seen to slow down), the
    fast-path verdict takes the smaller.
    """
    low_precision = comp.dtype in (torch.float16, torch.bfloat16)
    variants: dict[str, dict] = {}
    if low_precision:
        variants["float32 instead of " + str(comp.dtype).removeprefix("torch.")] = dict(dtype=torch.float32)
    variants["classic attention (AttnProcessor)"] = dict(classic_attention=True)
    variants["channels_last"] = dict(channels_last=True)
    if compile_mode:
        variants[f"torch.compile ({compile_mode})"] = dict(compile_mode=compile_mode)
        variants["fast path: channels_last + torch.compile"] = dict(channels_last=True, compile_mode=compile_mode)
    print(f"\nSpeed lesson: the hand-written loop with one change at a time, against the pipeline's defaults "
          f"({str(comp.dtype).removeprefix('torch.')}, SDPA attention), timed in turns with it; image tolerance "
          f"max |difference| <= {tolerance:g}")
    rows = [("variant", "s / image", "pipeline s / image", "speed-up", "vs first", "max |image - pipeline's|", "")]
    baseline = pipeline_run(pipe, s)
    speedups = {}
    for name, changes in variants.items():
        print(f"  {name}: {'compiling, then ' if 'compile' in name else ''}timing ...", flush=True)
        began = time.perf_counter()
        variant = _variant(comp, **changes)
        run = hand_run(variant, s)
        first = run()                                     # compiles, if it compiles
        synchronize(device)
        setup_s = time.perf_counter() - began
        both = time_in_turns({name: run, "pipeline": baseline}, device=device, warmup=max(warmup - 1, 0),
                             repeats=repeats, memory=memory, unet_calls=calls, batch=s.batch)
        t, base = both[name], both["pipeline"]
        difference = (t.image - reference.image).abs().max().item()
        ok = "within" if difference <= tolerance else "OUTSIDE tolerance"
        note = f"{ok}; first run incl. set-up {setup_s:.1f} s" if "compile" in name else ok
        in_turns, vs_first = paired_ratio(base, t), reference.per_image / t.per_image
        speedups[name] = min(in_turns, vs_first)
        rows.append((name, f"{t.per_image:.3f}", f"{base.per_image:.3f}", f"{in_turns:.2f}x", f"{vs_first:.2f}x",
                     f"{difference:.2g}", note))
        print(f"  {name}: {t.per_image:.3f} s / image, {in_turns:.2f}x in turns, {vs_first:.2f}x vs first; {note}",
              flush=True)     # the table below repeats it; this line survives a run stopped before the table
        del variant, run, first
        if device.type == "cuda":
            torch.cuda.empty_cache()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                    for r in rows))
    print(f"speed-up: the median of the pipeline's time / the variant's, over the turns (each pair ran back to "
          f"back); vs first: the pipeline's median before any variant ran ({reference.per_image:.3f} s) / the variant's")
    fast = [name for name in speedups if name.startswith("fast path")]
    if fast:
        speedup = speedups[fast[0]]
        verdict = "meets" if speedup >= FAST_PATH_GOAL else "misses"
        print(f"fast path: {speedup:.2f}x the pipeline's defaults, the smaller of the two speed-ups "
              f"({verdict} the goal of {FAST_PATH_GOAL}x)")
    elif not compile_mode:
        print("torch.compile not measured (--compile no, the default on a CPU); the fast path needs it")


@contextlib.contextmanager
def _restored_attention(unet):
    processors = unet.attn_processors
    try:
        yield
    finally:
        unet.set_attn_processor(processors)


def memory_lesson(comp: models.SDComponents, s: Setting, *, device, memory: PeakMemory, size: int) -> None:
    unet, vae = comp.unet, comp.vae
    f = comp.vae_scale_factor
    g = torch.Generator().manual_seed(s.seed)
    print(f"\nMemory lesson ({memory.kind}):")
    rows = [("", "peak memory", "seconds")]

    def measure(name: str, fn: Callable[[], object]) -> None:
        fn()                                                                     # warm-up
        synchronize(device)
        memory.reset()
        began = time.perf_counter()
        fn()
        synchronize(device)
        rows.append((name, fmt_bytes(memory.read()), f"{time.perf_counter() - began:.3f}"))

    # one U-Net call on the guidance batch at the benchmark's size
    latents = torch.randn(2 * s.batch, unet.config.in_channels, s.height // f, s.width // f, generator=g)
    latents = latents.to(device, comp.dtype)
    text = torch.randn(2 * s.batch, comp.tokenizer.model_max_length, unet.config.cross_attention_dim,
                       generator=g).to(device, comp.dtype)

    def call():
        with torch.no_grad():
            return unet(latents, 500, encoder_hidden_states=text).sample

    with _restored_attention(unet):
        measure(f"U-Net call {s.height}x{s.width}, batch {2 * s.batch}, SDPA (the default)", call)
        unet.set_attn_processor(AttnProcessor())
        measure("U-Net call, classic attention (AttnProcessor)", call)
        unet.set_attention_slice("auto")                 # replaces every processor by a sliced classic one
        measure("U-Net call, attention slicing ('auto': half the heads at a time)", call)
        unet.set_attention_slice("max")
        measure("U-Net call, attention slicing ('max': one head at a time)", call)

    # one VAE decode at `size`
    z = torch.randn(s.batch, vae.config.latent_channels, size // f, size // f, generator=g).to(device, comp.dtype)
    measure(f"VAE decode {size}x{size}", lambda: sampling.decode_latents(vae, z, upcast=False))
    vae.enable_tiling()
    try:
        measure(f"  + VAE tiling (tiles of {vae.tile_sample_min_size} px)",
                lambda: sampling.decode_latents(vae, z, upcast=False))
    finally:
        vae.disable_tiling()
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print("\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                    for r in rows))


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundled", help="bundled, sd15-replica, or a diffusers SD 1.x folder / hub id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best one here)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="default: fp16 on CUDA, fp32 elsewhere")
    p.add_argument("--height", type=int, default=None, help="default: the model's image size")
    p.add_argument("--width", type=int, default=None, help="default: the model's image size")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale (default: the model's recommended one, 7.5 for SD)")
    p.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each loop, median reported (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lesson", action="store_true", help="also measure fp32/fp16, attention, channels_last, compile")
    p.add_argument("--compile", default="auto", choices=["auto", "yes", "no"],
                   help="include torch.compile in --lesson (auto: on CUDA only; it compiles for a minute or more)")
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                   help="torch.compile mode (default max-autotune-no-cudagraphs)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="--lesson: allowed max |image difference| in [-1, 1] (default 5e-2 in fp16/bf16, 1e-3 in fp32)")
    p.add_argument("--memory", action="store_true", help="also measure attention slicing and VAE tiling")
    p.add_argument("--memory-size", type=int, default=None,
                   help="image side for the VAE tiling measurement (default: twice the image size)")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be 0 or more, got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Timing]:
    """Parse ``argv``, run the benchmark without gradients (and leave the caller's grad mode as it was)."""
    args = parse_args(argv)
    with torch.no_grad():
        return run(args)


def run(args: argparse.Namespace) -> dict[str, Timing]:
    dtype_name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", None: None}[args.dtype]
    try:
        device, dtype = resolve(args.device, dtype_name)
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"sampling_speed.py: {err}") from err
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    comp = models.load(args.model, device=device, dtype=dtype)
    f = comp.vae_scale_factor
    s = Setting(steps=args.steps, height=args.height or comp.image_size, width=args.width or comp.image_size,
                guidance=args.guidance if args.guidance is not None else models.recommended_guidance_scale(comp),
                batch=args.batch, seed=args.seed)
    if s.height % f or s.width % f:
        raise SystemExit(f"sampling_speed.py: --height and --width must be multiples of {f} (the VAE's factor), "
                         f"got {s.height}x{s.width}")
    pipe = comp.make_pipeline()
    memory = PeakMemory(device)
    calls = unet_calls_per_image(comp, s.steps)

    print("\n".join(machine_lines()))
    print(f"model   : {args.model} ({type(comp.scheduler).__name__}), {s.height}x{s.width}, {s.steps} steps "
          f"({calls} U-Net calls on a batch of {2 * s.batch if s.guidance > 1 else s.batch}), guidance {s.guidance:g}, "
          f"batch {s.batch}, {device.type} {str(dtype).removeprefix('torch.')}")
    print(f"timing  : {args.warmup} warm-up + {args.repeats} timed runs each, in turns; median. "
          f"Peak memory: {memory.kind}\n")

    timings = time_in_turns({"hand-written loop": hand_run(comp, s), "StableDiffusionPipeline": pipeline_run(pipe, s)},
                            device=device, warmup=args.warmup, repeats=args.repeats, memory=memory,
                            unet_calls=calls, batch=s.batch)
    hand, pipeline = timings["hand-written loop"], timings["StableDiffusionPipeline"]
    print(table([hand, pipeline]))
    ratio = paired_ratio(hand, pipeline)
    print(f"ratio hand / pipeline: {ratio:.3f}, the median of the {len(hand.seconds)} runs' ratios, each against the "
          f"pipeline's run beside it (goal <= {RATIO_GOAL}: {'met' if ratio <= RATIO_GOAL else 'missed'}); ratio of "
          f"the medians {hand.per_image / pipeline.per_image:.3f}")
    print(f"images: max |difference| {(hand.image - pipeline.image).abs().max().item():.2g}")

    if args.lesson:
        compile_mode = None
        if args.compile == "yes" or (args.compile == "auto" and device.type == "cuda"):
            compile_mode = args.compile_mode
        tolerance = args.tolerance if args.tolerance is not None else (1e-3 if dtype == torch.float32 else 5e-2)
        speed_lesson(comp, pipe, s, pipeline, device=device, warmup=args.warmup, repeats=args.repeats, memory=memory,
                     compile_mode=compile_mode, calls=calls, tolerance=tolerance)
    if args.memory:
        memory_lesson(comp, s, device=device, memory=memory, size=args.memory_size or 2 * max(s.height, s.width))
    return timings


if __name__ == "__main__":
    main()
