"""Does ``--threads auto`` (the command line's default) pick well, on an idle machine and with
one core kept busy by another process?

For each workload it times ``--threads 1``, ``--threads 2`` and ``auto``, interleaved over
rounds, each in a fresh process (as a user's command runs), and reports the median and the
ratio of ``auto`` to the best fixed setting. Workloads: the four cells of
``sims/bench_step.py`` (one training step's inference: T steps + read-out, ms per update) and
``python -m ctpc.train models/train_digits.yaml`` (the whole training, s).

    python sims/bench_threads.py [--conditions idle,busy] [--rounds 3] [--out FILE.json]
    python sims/bench_threads.py --threshold        # ms per step against work, 1 vs 2 threads

"busy" starts one process spinning on one core for the duration of each measurement. Run it on
an otherwise idle machine (nothing else running): the "idle" rows assume so.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
SETTINGS = ("1", "2", "auto")
TRAIN = "train_digits"
WORKLOADS = ("8,8,16,64", "32,32,64,64", "128,32,64,64", "32,128,256,64", TRAIN)
REPEATS = {"8,8,16,64": 60, "32,32,64,64": 20, "128,32,64,64": 6, "32,128,256,64": 5}
# --threshold: (N, L, T, B) from tiny to large, to place ONE_THREAD_BELOW_MACS
THRESHOLD_CELLS = ((8, 8, 16, 16), (8, 8, 16, 64), (16, 8, 16, 64), (16, 16, 32, 64),
                   (32, 8, 16, 64), (32, 16, 32, 64), (32, 32, 64, 64), (64, 16, 32, 64))


def child(workload: str, setting: str) -> dict:
    """Run one workload in this process with threads ``setting``; ms per update (cells) or s
    (training)."""
    import torch

    import ctpc
    from ctpc.build.objects import set_threads
    if workload == TRAIN:
        cfg = ctpc.load_config(ROOT / "models" / "train_digits.yaml")
        n = set_threads(setting if setting == "auto" else int(setting), cfg)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            ctpc.train(cfg, out=Path(tmp) / "t.nc", progress=False)
            return {"value": time.perf_counter() - t0, "unit": "s", "threads": n}
    from bench_step import config, ctpc_loop
    n_, l_, t_, b_ = map(int, workload.split(","))
    cfg_dict = config(n_, l_, t_, b_)
    n = set_threads(setting if setting == "auto" else int(setting), ctpc.load_config(cfg_dict))
    run = ctpc_loop([cfg_dict], check=False)
    run()                                                            # warm-up
    reps = REPEATS.get(workload, 10)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"value": 1e3 * statistics.median(times), "unit": "ms", "threads": n,
            "torch_threads": torch.get_num_threads()}


def measure(workload: str, setting: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", workload, setting],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=2, metavar=("WORKLOAD", "SETTING"), help=argparse.SUPPRESS)
    p.add_argument("--conditions", default="idle,busy")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="';'-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threshold", action="store_true")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(*a.child)))
        return 0
    result = {"load_before": os.getloadavg(), "rounds": a.rounds, "rows": []}
    if a.threshold:
        from ctpc.build.resolve import load_config
        from ctpc.build.objects import step_macs
        from bench_step import config
        print("N, L, T, B      MMAC/step   1 thread   2 threads  (ms per update)")
        for cell in THRESHOLD_CELLS:
            w = ",".join(map(str, cell))
            macs = step_macs(load_config(config(*cell)))
            ms = {s: statistics.median(measure(w, s)["value"] for _ in range(a.rounds))
                  for s in ("1", "2")}
            print(f"{str(cell):16s} {macs / 1e6:8.2f}  {ms['1']:9.3f}  {ms['2']:9.3f}", flush=True)
            result["rows"].append({"cell": w, "macs": macs, "ms_1": ms["1"], "ms_2": ms["2"]})
    else:
        workloads = a.workloads.replace(";", " ").split() if ";" in a.workloads else \
            [w for w in WORKLOADS if w in a.workloads]
        print("condition  workload          1 thread    2 threads   auto (n)     auto/best")
        for cond in a.conditions.split(","):
            for w in workloads:
                vals = {s: [] for s in SETTINGS}
                picked = set()
                for _ in range(a.rounds):
                    for s in SETTINGS:          # interleaved: drift hits every setting alike
                        spin = spinner() if cond == "busy" else None
                        try:
                            if spin is not None:
                                time.sleep(0.3)          # let it occupy its core
                            r = measure(w, s)
                        finally:
                            if spin is not None:
                                spin.kill()
                                spin.wait()
                        vals[s].append(r["value"])
                        if s == "auto":
                            picked.add(r["threads"])
                med = {s: statistics.median(v) for s, v in vals.items()}
                best = min(med["1"], med["2"])
                unit = "s" if w == TRAIN else "ms"
                print(f"{cond:9s}  {w:16s} {med['1']:8.3f}{unit:2s}  {med['2']:8.3f}{unit:2s}  "
                      f"{med['auto']:8.3f}{unit:2s} ({','.join(map(str, sorted(picked)))})  "
                      f"{med['auto'] / best:6.2f}", flush=True)
                result["rows"].append({"condition": cond, "workload": w, "unit": unit,
                                       "median": med, "values": vals,
                                       "auto_threads": sorted(picked),
                                       "auto_over_best": med["auto"] / best})
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
