"""Whole-process start-up: `pipe convert` against ultralytics' converter, `just all` up to date, `pipe --help`.

    python bench/startup.py --root ../shared/data/mvtec --category bottle

Every row is a separate process, timed from start to exit, all rows interleaved in each of --repeat
rounds (after one untimed warm-up round, so no row pays for a cold disk cache alone); the median
counts and the fastest is shown beside it. Ratios are of medians from the same run.

- pipe convert: ``pipe convert <category> --force`` into a fresh folder each round: validation, all three
  formats, fidelity check, everything written;
- ultralytics: a process calling ``convert_segment_masks_to_yolo_seg`` on the same masks (class-indexed
  copies prepared beforehand, untimed), which writes YOLO-seg polygons only and checks nothing;
- just all, up to date: what the Justfile's ``all`` recipe runs (read from the Justfile: ``pipe all``,
  every stage in one process), after one full run on --profile (default tiny) with the synthetic
  stand-in; it must report that it skipped;
- ``python -c "import torch"``: what every step used to pay before deciding to skip;
- ``pipe --help``.
Without --root (or $MVTEC_ROOT) the conversion rows use a synthetic category of MVTec's size. Prints a
table and writes JSON (default bench/results/startup-<category>.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared import index_masks, interleaved, mask_source, save_result

from pipeline.data.layout import load_category
from pipeline.device import package_versions

REPO = Path(__file__).resolve().parents[1]
PIPE = [str(Path(sys.executable).with_name("pipe"))] if Path(sys.executable).with_name("pipe").is_file() \
    else [sys.executable, "-m", "pipeline"]
ALL = "just all, every step up to date"
ULTRALYTICS = ("import logging, sys; logging.getLogger('ultralytics').setLevel(logging.ERROR); "
               "from ultralytics.data.converter import convert_segment_masks_to_yolo_seg as convert; "
               "convert(sys.argv[1], sys.argv[2], int(sys.argv[3]))")


def all_steps(justfile: Path, category: str, profile: str) -> list[list[str]]:
    """The ``pipe`` command lines ``just all`` runs, with the Justfile's variables filled in (``{{ARGS}}``
    empty): its own body (``pipe all``, one process), else the recipes it depends on, one process each. The
    bench times what ``just all`` runs, not a copy that could drift from it."""
    text = justfile.read_text(encoding="utf-8")
    recipe = re.search(r"^all\b[^\n:]*:([^\n]*)\n((?:[ \t]+[^\n]*\n?)*)", text, re.M)
    if recipe is None:
        raise SystemExit(f"{justfile}: no `all:` recipe")
    lines = [ln.strip() for ln in recipe.group(2).splitlines() if ln.strip().startswith("pipe ")]
    for dep in recipe.group(1).split():
        body = re.search(rf"^{re.escape(dep)}\b[^\n]*:\n\s+(pipe [^\n]+)$", text, re.M)
        if body is None:
            raise SystemExit(f"{justfile}: recipe {dep!r} has no `pipe ...` line")
        lines.append(body.group(1))
    if not lines:
        raise SystemExit(f"{justfile}: `all` runs no `pipe` command")
    return [PIPE + shlex.split(ln.replace("{{category}}", category).replace("{{profile}}", profile)
                               .replace("{{ARGS}}", ""))[1:] for ln in lines]


def run(cmd: list[str], cwd: Path, env: dict[str, str], expect: str | None = None) -> float:
    """Wall time of one process; stops the bench when it fails or (``expect``) does not say ``expect``."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    if proc.returncode or (expect and expect not in proc.stderr):
        raise SystemExit(f"{shlex.join(cmd)} (in {cwd}) exited {proc.returncode}"
                         f"{'' if proc.returncode else f', not {expect!r}'}:\n{proc.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.environ.get("MVTEC_ROOT"), help="MVTec AD root for the conversion rows "
                    "(default $MVTEC_ROOT; without one a 900 px synthetic category)")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--profile", default="tiny", help="profile of the `just all` rows (its full run trains)")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds; the median counts")
    ap.add_argument("--json", type=Path, default=None, help="output JSON (default bench/results/startup-<category>.json)")
    ap.add_argument("--work", type=Path, default=REPO / "datasets",
                    help="folder for the outputs (default datasets/, where `pipe convert` writes; removed afterwards)")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bench-startup-", dir=args.work))
    env = {**os.environ, "PIPE_FORCE": ""}  # the skips must skip
    try:
        root, data = mask_source(args.root, args.category, work)
        cat = load_category(root, args.category)
        masks = sum(s.mask is not None for s in cat.samples)
        indexed = str(index_masks(cat, work / "indexed"))
        classes = str(len(cat.spec.defects))
        fresh = iter(range(1 << 30))
        convert = [*PIPE, "convert", args.category, "--root", str(Path(root).resolve()), "--force", "--out"]

        steps_dir = work / "all"  # `just all` from a fresh checkout: no MVTec data, so the synthetic stand-in
        steps_dir.mkdir()
        steps_env = {**env, "MVTEC_ROOT": str(steps_dir / "no-data")}
        steps = all_steps(REPO / "Justfile", args.category, args.profile)
        print(f"full run of `just all` ({len(steps)} process(es)) on --profile {args.profile} (untimed)...", flush=True)
        for cmd in steps:
            run(cmd, steps_dir, steps_env)

        methods = {
            "pipe convert (process)": lambda: run(convert + [str(work / f"out{next(fresh)}" / args.category)], work, env),
            "ultralytics converter (process)":
                lambda: run([sys.executable, "-c", ULTRALYTICS, indexed, str(work / f"ul{next(fresh)}"), classes], work, env),
            ALL: lambda: sum(run(cmd, steps_dir, steps_env, expect="skipped") for cmd in steps),
            'python -c "import torch"': lambda: run([sys.executable, "-c", "import torch"], work, env),
            "pipe --help": lambda: run([*PIPE, "--help"], work, env),
        }
        times = interleaved(args.repeat, methods, warmup=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {
        "ultralytics / pipe convert (target >= 3)": med["ultralytics converter (process)"] / med["pipe convert (process)"],
        "just all up to date / import torch (target <= 1.5)":
            med[ALL] / med['python -c "import torch"'],
    }
    print(f"\n{args.category} ({data}, {masks} masks), `just all` on --profile {args.profile}; whole processes, "
          f"median of {args.repeat} interleaved rounds\n")
    print(f"| {'process':<36} | {'median s':>8} | {'fastest s':>9} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 11}|")
    for name, t in times.items():
        print(f"| {name:<36} | {med[name]:8.3f} | {min(t):9.3f} |")
    print()
    for name, r in ratios.items():
        print(f"{name}: {r:.2f}")
    result = {"category": args.category, "data": data, "masks": masks, "profile": args.profile, "repeat": args.repeat,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "packages": package_versions(), "steps": [shlex.join(["pipe", *s[len(PIPE):]]) for s in steps],
              "seconds": times, "median_s": med, "ratios": ratios}
    save_result("startup", args.category, result, args.json)


if __name__ == "__main__":
    main()
