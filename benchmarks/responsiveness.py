"""What a learner waits for at the keyboard, measured (figures, not tests): notebook 08's slider redraws
on the bundled model, and building the SD 1.5 replica (on the meta device, and with random weights).

    python benchmarks/responsiveness.py             # 5 moves of each slider, on this machine's CPU
    python benchmarks/responsiveness.py --moves 9 --no-replica

A guidance move is a cache miss (a new sampling run with the notebook's 10 steps, 3 VAE decodes
and a PNG); a timestep move reuses the run. Prints the median wall-clock seconds of each kind of
move and the CPU seconds of the guidance moves (all threads; a wall time far above the CPU time
means other processes had the cores). The notebook's sliders feel live below about 1 s. The replica
on the meta device allocates nothing and should take seconds; with random weights it allocates
1.07 B parameters in float32 (about 4.3 GB).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sdlearn import latents, models, text


def measure(moves: int = 5) -> dict[str, float]:
    c = models.load("bundled", device="cpu", dtype=torch.float32)
    with torch.no_grad():
        text_a, text_b, empty = text.encode(
            c.tokenizer, c.text_encoder, ["a big red circle on the left", "a small blue square on the right", ""]
        ).split(1)
    side, channels = c.unet.config.sample_size, c.unet.config.in_channels
    noise = [torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(s)) for s in (5, 6)]
    ex = latents.LatentExplorer(c.unet, c.vae, c.scheduler, noise_a=noise[0], noise_b=noise[1], prompt_embeds_a=text_a,
                                prompt_embeds_b=text_b, negative_prompt_embeds=empty, num_inference_steps=10)
    guidance = models.recommended_guidance_scale(c)
    ex.render(0.0, 0.0, guidance, 5)                                        # the notebook's first draw (warm-up)
    wall, cpu = [], []
    for i in range(moves):
        start, start_cpu = time.perf_counter(), time.process_time()
        ex.render(0.3, 0.5, guidance + 0.5 * (i + 1), 5)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    steps = []
    for step in range(moves):
        start = time.perf_counter()
        ex.render(0.3, 0.5, guidance + 0.5 * moves, step)
        steps.append(time.perf_counter() - start)
    return {"guidance_move_s": statistics.median(wall), "guidance_move_cpu_s": statistics.median(cpu),
            "timestep_move_s": statistics.median(steps), "threads": torch.get_num_threads(), "moves": moves}


def replica_seconds() -> dict[str, float]:
    times = {}
    for name, meta in (("meta", True), ("random weights", False)):
        start = time.perf_counter()
        models.sd15_replica(meta=meta)
        times[name] = time.perf_counter() - start
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=5)
    parser.add_argument("--no-replica", action="store_true", help="skip building the SD 1.5 replica")
    args = parser.parse_args(argv)
    if not args.no_replica:
        for name, seconds in replica_seconds().items():
            print(f"SD 1.5 replica ({name}): built in {seconds:.2f} s")
    r = measure(args.moves)
    print(f"slider moves on the bundled model, CPU ({r['threads']} threads), median of {r['moves']}: "
          f"guidance move {r['guidance_move_s']:.3f} s ({r['guidance_move_cpu_s']:.3f} s of CPU time), "
          f"timestep move {r['timestep_move_s']:.3f} s")


if __name__ == "__main__":
    main()
