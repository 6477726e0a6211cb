#!/usr/bin/env python3
"""Where a training step's time goes: a sampling profile of whole steps, by kind of work and by thread.

Runs `fer-train bench` (real training steps of the v2 network on a fixed batch of 64) under
`perf record` (the cpu-clock software event, so it works without hardware counters; with DWARF call
stacks and their inlined frames, so a rayon worker's sample names the op it works for), then
sorts every sample by what it was doing (which kernel or library, from its symbol) and which
thread took it: the main thread, which records the autodiff graph and runs Burn's ops that are
not parallel, or a rayon worker. Prints a markdown table and the CPU use of the whole run
(100 % = one core busy for the whole wall time).

    cargo build -p fer-train
    python3 scripts/profile_step.py                       # 20 steps, the default network
    python3 scripts/profile_step.py --steps 20 -- --attention off
    python3 scripts/profile_step.py --binary target/release/fer-train

Needs Debian's linux-perf. Arguments after `--` go to `fer-train bench`.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

# A sample belongs to the first category any frame of its call stack matches, in this order:
# fer-train's kernels before Burn's ops, ops before the libraries they call, autodiff's own
# bookkeeping and rayon's scheduling only where no op is on the stack.
CATEGORIES = [
    (r"fer_train::kernels::batch_norm", "BatchNorm + ReLU (fer-train kernel)"),
    (r"fer_train::kernels::max_pool", "max-pool 2x2 (fer-train kernel)"),
    (r"fer_train::kernels::stem", "stem conv (fer-train kernel)"),
    (r"fer_train::kernels::separable|tap_product", "depthwise weight gradient (fer-train kernel)"),
    (r"batch_norm", "BatchNorm (Burn, composed; its main-thread part)"),
    (r"burn_flex::ops::pool|max_pool", "max-pool (Burn)"),
    (r"conv_transpose", "transposed conv (Burn: depthwise input gradient)"),
    (r"burn_flex::ops::conv|conv_plane", "conv (Burn: depthwise forward; before the kernels, the stem too)"),
    (r"gemm", "gemm (1x1 convs as matmuls, linear layers, im2col)"),
    (r"copy_2d_tiled|to_contiguous|copy_strided", "copies into contiguous layout (Burn)"),
    (r"burn_optim", "optimizer"),
    (r"macerator|burn_flex::ops::(binary|unary|activation|comparison|mask|float)|burn_flex::simd",
     "element-wise ops (Burn)"),
    (r"burn_flex::ops::reduce", "reductions (Burn)"),
    (r"burn_flex", "other flex ops"),
    (r"burn_autodiff", "autodiff graph"),
    (r"fer_train::batch|HostBatch", "batch to tensors"),
    (r"rayon|crossbeam|sched|futex", "rayon (scheduling, waiting)"),
]
# Leaf frames that are the cost of memory management rather than of the op around them.
MEMORY = r"malloc|free|mmap|munmap|page|clear_|memset|_int_|sysmalloc|do_anonymous|exc_"


def category(stack):
    for pattern, name in CATEGORIES:
        if any(re.search(pattern, frame) for frame in stack):
            return name
    return "other"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="training steps to time (default 20)")
    p.add_argument("--binary", default="target/debug/fer-train", help="the fer-train to profile")
    p.add_argument("--frequency", type=int, default=199, help="samples per second per thread")
    p.add_argument("bench_args", nargs="*", help="more `fer-train bench` arguments (after --)")
    args = p.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary}: not built (cargo build -p fer-train)")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        command = [args.binary, "bench", "--steps", str(args.steps), *args.bench_args]
        started = time.monotonic()
        run = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(args.frequency),
                              "--call-graph", "dwarf,16384",
                              "-o", data, "--", *command], capture_output=True, text=True)
        wall = time.monotonic() - started
        if run.returncode != 0:
            sys.exit(f"perf record failed:\n{run.stderr}")
        print(run.stdout.strip())
        script = subprocess.run(["perf", "script", "-i", data, "-F", "pid,tid,ip,sym,dso"],
                                capture_output=True, text=True, check=True).stdout
    samples = collections.Counter()
    threads = collections.Counter()
    memory = collections.Counter()
    for block in script.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        match = re.match(r"\s*(\d+)/(\d+)", lines[0])
        if not match:
            continue
        main_thread = match.group(1) == match.group(2)
        stack = [line.strip() for line in lines[1:]]
        kind = category(stack)
        samples[(kind, main_thread)] += 1
        threads[main_thread] += 1
        if stack and re.search(MEMORY, stack[0].split(" ", 1)[-1]):
            memory[main_thread] += 1
    total = sum(threads.values())
    if total == 0:
        sys.exit("no samples")
    kinds = sorted({k for k, _ in samples}, key=lambda k: -(samples[(k, True)] + samples[(k, False)]))
    print(f"\n{total} samples at {args.frequency} Hz over {wall:.1f} s wall: CPU use "
          f"{100 * total / args.frequency / wall:.0f} % (200 % = both cores busy throughout); "
          f"main thread {100 * threads[True] / total:.0f} % of samples, rayon workers "
          f"{100 * threads[False] / total:.0f} %\n")
    print("| work | share of samples | on the main thread | on rayon workers |")
    print("|---|---:|---:|---:|")
    for kind in kinds:
        main, workers = samples[(kind, True)], samples[(kind, False)]
        print(f"| {kind} | {100 * (main + workers) / total:.1f} % | {100 * main / total:.1f} % | "
              f"{100 * workers / total:.1f} % |")
    print(f"\nOf all samples, {100 * sum(memory.values()) / total:.1f} % are allocation, page faults "
          f"and zeroing (main thread {100 * memory[True] / total:.1f} %).")


if __name__ == "__main__":
    main()
