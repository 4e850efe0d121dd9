"""FER2013: how fast do the four architectures train, and what does the Ray Data reader cost
against a plain pandas parse of the same CSV?

  (1) training images per second per architecture (Adam, batch 256, 48×48 grey), on the CPU,
      and on a GPU when there is one: fp32, then channels-last with bf16 autocast;
  (2) reading fer2013.csv into uint8 images: pandas.read_csv + a parse of every pixels
      string, against the Ray Data reader into an empty cache, and again from the warm cache.

    python bench/fer_throughput.py                        # a generated 35,887-row fer2013.csv
    python bench/fer_throughput.py --csv ~/data/fer2013.csv
    python bench/fer_throughput.py --rows 8000 --steps 5  # quicker
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from smallest import parse  # noqa: E402  (bench/, beside this file)


def train_speed(name: str, device: torch.device, steps: int, batch: int, fast: bool) -> float:
    from workloads.models.fer_nets import build_fer_net

    torch.manual_seed(0)
    net = build_fer_net(name, 0.25).to(device)
    x = torch.rand(batch, 1, 48, 48, device=device)
    y = torch.randint(0, 7, (batch,), device=device)
    if fast:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    step()  # warm-up: allocations, cuDNN autotuning
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", help="a real fer2013.csv (default: generate a look-alike)")
    parser.add_argument("--rows", type=int, default=35887, help="rows of the generated file")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per architecture")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "emosweep-bench-fer"))
    args = parse(parser, rows=2000, steps=2)

    from workloads.data.fer2013 import load_images, read_fer2013, read_with_pandas
    from workloads.models.fer_nets import ARCHITECTURES, build_fer_net, count_params

    torch.set_num_threads(os.cpu_count())
    print(f"(1) training throughput, batch {args.batch}, {args.steps} steps; CPU: {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    header = "| architecture | params | CPU img/s |" + (" GPU fp32 img/s | GPU channels-last + bf16 img/s |"
                                                       if len(devices) > 1 else "")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in ARCHITECTURES:
        cells = [name, f"{count_params(build_fer_net(name, 0.25)):,}",
                 f"{train_speed(name, devices[0], args.steps, args.batch, False):.0f}"]
        if len(devices) > 1:
            cells.append(f"{train_speed(name, devices[1], args.steps * 5, args.batch, False):.0f}")
            cells.append(f"{train_speed(name, devices[1], args.steps * 5, args.batch, True):.0f}")
        print("| " + " | ".join(cells) + " |", flush=True)
    if len(devices) == 1:
        print("(no GPU here: the channels-last + mixed-precision rows need one)")

    if args.csv:
        csv = Path(args.csv)
    else:
        from workloads.fer import ensure_synthetic

        csv = ensure_synthetic(Path(args.work), args.rows, 0)
    size_mb = csv.stat().st_size / 1e6
    print(f"\n(2) reading {csv} ({size_mb:.0f} MB)")
    t = time.perf_counter()
    frame, images = read_with_pandas(csv)
    pandas_s = time.perf_counter() - t
    import ray

    from workloads.core.ray_start import start_ray

    t = time.perf_counter()
    start_ray()
    ray_start = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        cold = read_fer2013(csv, cache_dir=cache, progress=False)
        items, cached = load_images(cold)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = read_fer2013(csv, cache_dir=cache, progress=False)
        items, cached = load_images(warm)
        warm_s = time.perf_counter() - t
    ray.shutdown()
    assert len(cached) == len(images), (len(cached), len(images))
    n = len(images)
    print("| reader | seconds | rows/s |\n|---|---|---|")
    print(f"| pandas.read_csv + parse (plain) | {pandas_s:.2f} | {n / pandas_s:,.0f} |")
    print(f"| Ray Data reader, empty cache | {cold_s:.2f} | {n / cold_s:,.0f} |")
    print(f"| Ray Data reader, warm cache | {warm_s:.2f} | {n / warm_s:,.0f} |")
    print(f"\nRay Data cold / pandas: {cold_s / pandas_s:.2f}x the time; warm / pandas: {warm_s / pandas_s:.2f}x "
          f"(Ray start {ray_start:.1f} s not included). Both include turning every row into a uint8 image; "
          f"only the Ray Data reader reports malformed rows instead of stopping at the first.")


if __name__ == "__main__":
    main()
