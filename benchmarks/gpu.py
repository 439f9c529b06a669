"""GPU benchmarks: fused vs separate seeds, and trials per minute, on CUDA.

Ready to run on a machine with a GPU: ``.venv/bin/python benchmarks/gpu.py`` (needs a CUDA build
of torch). Without CUDA it says so and exits 0. Parts, on the benchmark study of
``throughput.py`` (digits, depth 10 width 64, batch 32, 5 epochs):

- fused seeds: k separate ``trainers.train`` runs vs one ``trainers.train_fused`` run of the same
  k seeds, for k = 8 and 32 (on a GPU a tiny MLP is launch-bound, so fusing should pay more than
  on CPU);
- raw loop: the 16 study trials one after the other on the GPU, trials per minute;
- fused trials: the same 16 configurations, each with ``--seeds`` seeds fused, trials (seeds
  counted) per minute;
- study (``--study``): ``search.run_study`` with ``resources.gpu = 1/concurrency``.

``--device cpu`` runs the same code on CPU (a smoke test of this script, not a GPU figure).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import fused_seeds
import throughput as tp
import torch

from spaces import load_config
from trainers import load_splits, train_fused


def fused_trials(config, trials, seeds: int, device: str) -> float:
    """Seconds for every configuration trained once with ``seeds`` seeds fused."""
    data = load_splits(config.data.name).to(device)
    t0 = time.perf_counter()
    for params in trials:
        settings = common.settings_for(config, params, diagnostics=False)
        train_fused(common.build_for(config, params), list(range(seeds)), data, settings)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--seeds", type=int, default=8, help="seeds per fused trial")
    parser.add_argument("--study", action="store_true", help="also run search.run_study on GPU")
    parser.add_argument("--concurrency", type=int, default=4, help="trials at once (--study)")
    parser.add_argument("--quick", action="store_true", help="4 trials, 2 epochs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"benchmarks/gpu.py: no CUDA device here (torch {torch.__version__}, "
            f"cuda available: False); nothing to measure. Run it on a GPU machine."
        )
        return 0
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device}: {name}; torch {torch.__version__}")
    trials_n, epochs = (4, 2) if args.quick else (16, 5)
    out: dict[str, object] = {"device": name}

    print(f"\n== fused seeds on {args.device}: elu + he_normal + bn before, {epochs} epochs")
    for k in (8, 32):
        r = fused_seeds.fused_vs_separate(args.device, k, epochs, threads=None)
        out[f"fused_{k}"] = r
        print(
            f"  {k:2d} seeds: separate {r['separate']:.2f} s, fused {r['fused']:.2f} s -> "
            f"fused/separate = {r['ratio']:.3f}x; max |best val acc diff| "
            f"{r['max_abs_best_val_diff']:.1e}"
        )

    with tempfile.TemporaryDirectory(prefix="gradsweep-gpu-") as tmp:
        study = common.study_dict(trials_n, epochs, str(Path(tmp) / "study"))
        config = load_config(study)
        trials = common.draw_trials(config)
        common.run_raw(config, trials[:1], True, args.device)  # warm-up
        for diagnostics in (True, False):
            seconds = common.run_raw(config, trials, diagnostics, args.device)
            out[f"raw_diagnostics_{diagnostics}"] = seconds
            print(
                f"  raw loop, {trials_n} trials sequential, diagnostics {diagnostics}: "
                f"{seconds:.1f} s = {trials_n * 60 / seconds:.1f} trials/min"
            )
        seconds = fused_trials(config, trials, args.seeds, args.device)
        out["fused_trials"] = seconds
        print(
            f"  fused, {trials_n} configurations x {args.seeds} seeds: {seconds:.1f} s = "
            f"{trials_n * args.seeds * 60 / seconds:.1f} seed-trials/min "
            f"({trials_n * 60 / seconds:.1f} configurations/min)"
        )
        if args.study:
            overrides = [f"max_concurrent={args.concurrency}"]
            if args.device.startswith("cuda"):  # --device cpu: the same study, smoke-tested
                overrides.append(f"resources.gpu={1 / args.concurrency}")
            seconds, figures, _ = tp.run_gradsweep(study, trials, overrides, prestart_ray=False)
            out["study"] = {"seconds": seconds, **figures}
            print(
                f"  search.run_study, {args.concurrency} at a time on {args.device}: "
                f"{seconds:.1f} s = {trials_n * 60 / seconds:.1f} trials/min"
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
