#!/usr/bin/env python3
"""Soak test for fer-sensor (issue 14 item 10; a script, not CI).

Runs the release `fer-sensor` on the sample frames, forever (--repeat 0), publishing binary
frames on a pseudo-terminal (read and counted here) and JSON lines on stdout (counted), for
--minutes minutes. Samples the process's resident memory (VmRSS) every 10 s and its frames/s
from its status lines, then prints a table and the RSS growth after warm-up.

    cargo build --release -p fer-firmware   # or the test build's target/debug/fer-sensor
    python3 scripts/soak.py --minutes 60 --csv soak.csv

Standard library only.
"""
import argparse
import os
import pty
import re
import subprocess
import sys
import threading
import time

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--minutes", type=float, default=60.0)
parser.add_argument("--binary", default=None, help="fer-sensor to run (default: target/release/fer-sensor)")
parser.add_argument("--classifier", default="models/fer.int8.onnx")
parser.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS growth is measured")
parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
parser.add_argument("--csv", default=None, help="write the samples here")
args = parser.parse_args()

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
candidates = [args.binary] if args.binary else [os.path.join(target, p, "fer-sensor") for p in ("release", "debug")]
binary = next((b for b in candidates if os.path.exists(b)), None)
if binary is None:
    sys.exit(f"none of {candidates} exists: cargo build --release -p fer-firmware (or --binary)")
print(f"soaking {binary} for {args.minutes:g} min")

master, slave = pty.openpty()
tty = os.ttyname(slave)
proc = subprocess.Popen(
    [binary, "--source", "samples", "--repeat", "0", "--hold", "10", "--classifier", args.classifier,
     "--serial", tty, "--every-frame", "--status-interval", str(args.every)],
    cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "RUST_LOG": "info"},
)
counts = {"serial_bytes": 0, "json_lines": 0, "fps": None}


def drain_serial():
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        counts["serial_bytes"] += len(data)


def drain_stdout():
    for _ in proc.stdout:
        counts["json_lines"] += 1


def drain_stderr():
    for line in proc.stderr:
        m = re.search(rb"status: ([0-9.]+) frames/s", line)
        if m:
            counts["fps"] = float(m.group(1))
        elif b"WARN" in line or b"ERROR" in line:
            sys.stderr.write(line.decode(errors="replace"))


for f in (drain_serial, drain_stdout, drain_stderr):
    threading.Thread(target=f, daemon=True).start()


def rss_kib():
    with open(f"/proc/{proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


samples = []
start = time.monotonic()
print(f"{'t (s)':>7} {'RSS (MiB)':>10} {'frames/s':>9} {'serial kB':>10} {'JSON lines':>11}")
try:
    while time.monotonic() - start < args.minutes * 60:
        time.sleep(args.every)
        if proc.poll() is not None:
            sys.exit(f"fer-sensor exited with {proc.returncode}")
        t = time.monotonic() - start
        rss = rss_kib()
        samples.append((t, rss, counts["fps"], counts["serial_bytes"], counts["json_lines"]))
        print(f"{t:7.0f} {rss / 1024:10.2f} {counts['fps'] or 0:9.1f} {counts['serial_bytes'] / 1e3:10.1f} "
              f"{counts['json_lines']:11d}", flush=True)
finally:
    proc.terminate()
    proc.wait(timeout=10)

after = [s for s in samples if s[0] >= args.warmup]
if after:
    rss = [s[1] for s in after]
    fps = [s[2] for s in after if s[2]]
    print(f"after {args.warmup:.0f} s warm-up: RSS {rss[0] / 1024:.2f} → {rss[-1] / 1024:.2f} MiB "
          f"(growth {(rss[-1] - rss[0]) / 1024:+.2f} MiB, max {max(rss) / 1024:.2f}); "
          f"frames/s min {min(fps):.1f} mean {sum(fps) / len(fps):.1f} max {max(fps):.1f}; "
          f"exit {proc.returncode} after SIGTERM")
if args.csv:
    with open(args.csv, "w") as out:
        out.write("t_s,rss_kib,fps,serial_bytes,json_lines\n")
        for s in samples:
            out.write(",".join("" if v is None else str(v) for v in s) + "\n")
