"""The whole pipeline on a lent GPU machine (the device tool), stage by stage, within its per-call limits.

A device call runs at most 10 minutes and carries at most 64 MiB, and the GPU image lacks ultralytics,
segment-anything, pycocotools, shapely, polars and clip. The real bottle folder is 151 MB, so the data
travels in chunks and the run is split into calls that each finish well inside the limit. A warm machine
keeps the ignored folders of the checkout (``.device/``, ``runs/``, ``datasets/``) and ``/tmp`` for about
30 s between calls, so the calls follow one another at once.

Here (once):

    ../shared/device/wheels.sh .whl scikit-learn               # the missing packages, ~62 MB
    python bench/gpu.py pack --root ../shared/data/mvtec       # .device/data-1 ... -N, each under 60 MiB

There, one call each, in order (``plan`` prints the exact list with the carry of each call):

    carry [.whl]:        pip install --target /tmp/site .whl/*.whl; python3 bench/gpu.py unpack
    carry [.device/data-k]: python3 bench/gpu.py unpack                      (k = 1 ... N)
    no carry:            python3 bench/gpu.py run stats convert yolo         (each under 10 minutes)
    no carry:            python3 bench/gpu.py run sam
    no carry:            python3 bench/gpu.py run classify report --collect

``run`` times each stage's command (``python3 -m pipeline ... --root .device/mvtec --profile full``),
appends the times to ``.device/stages.json``, and with ``--collect`` prints the table, writes
``bench/results/gpu-<device>.json`` (stage times, their sum, the cached-weights check, the commands)
and packs the report, summary, metrics and logs into ``$OUT/results.tgz`` for ``docs/results/``
(commit all of it but ``report.html``: its overlays are drawn on MVTec images, which stay out of git).
A stage that would outlast one call can go on in the next: ``run classify --extra --resume`` reuses every
finished fold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.convert.writers import link  # noqa: E402  (light: these import no ML package)
from pipeline.device import environment, select_device  # noqa: E402
from pipeline.io import read_json, write_json  # noqa: E402
WORK = REPO / ".device"
STAGES: dict[str, list[str]] = {
    "stats": ["stats"],
    "convert": ["convert"],
    "yolo": ["finetune", "yolo"],
    "sam": ["finetune", "sam"],
    "classify": ["classify"],
    "report": ["report"],
}
WEIGHT_CACHES = ("~/.cache/torch", "~/.cache/huggingface", "~/.cache/clip", "~/.config/Ultralytics")


def pack(root: Path, category: str, chunk_mib: float, out: Path = WORK) -> list[Path]:
    """Hard-link (or copy) ``root/category`` into ``out/data-k`` folders of at most ``chunk_mib`` each.

    Files keep their path under ``mvtec/``, so unpacking the chunks in any order rebuilds the category.
    """
    src = root / category
    if not src.is_dir():
        raise SystemExit(f"{src}: no such category folder; pass --root, the folder that holds {category}/")
    for old in out.glob("data-*"):
        shutil.rmtree(old)
    limit, chunks, size = chunk_mib * 2**20, [], 0.0
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        n = f.stat().st_size
        if n > limit:
            raise SystemExit(f"{f}: {n / 2**20:.1f} MiB is larger than one chunk ({chunk_mib} MiB)")
        if not chunks or size + n > limit:
            chunks.append(out / f"data-{len(chunks) + 1}")
            size = 0.0
        dest = chunks[-1] / "mvtec" / f.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        link(f, dest, "no-symlink")  # a symlink would travel to the device as a dangling link
        size += n
    return chunks


def unpack(work: Path = WORK) -> int:
    """Move every carried ``data-k`` chunk into ``work/mvtec`` (kept between calls); return the files moved."""
    moved = 0
    for chunk in sorted(work.glob("data-*")):
        for f in (p for p in (chunk / "mvtec").rglob("*") if p.is_file()):
            dest = work / "mvtec" / f.relative_to(chunk / "mvtec")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
            moved += 1
        shutil.rmtree(chunk)
    return moved


def cached_weights() -> dict[str, list[str]]:
    """Weight files already on this machine, per cache folder the frameworks download into."""
    found = {}
    for d in WEIGHT_CACHES:
        p = Path(os.path.expanduser(d))
        found[d] = sorted(str(f.relative_to(p)) for f in p.rglob("*")
                          if f.is_file() and f.suffix in {".pt", ".pth", ".bin", ".safetensors"}) if p.is_dir() else []
    return found


def run_stage(stage: str, category: str, root: Path, profile: str, extra: list[str]) -> dict[str, Any]:
    """One stage's ``pipe`` command, timed from outside (start-up and imports included)."""
    cmd = [sys.executable, "-m", "pipeline", *STAGES[stage], category, "--profile", profile, *extra]
    if stage in ("stats", "convert"):
        cmd += ["--root", str(root)]  # later stages read it from datasets/<category>/convert_report.json
    if stage == "convert":
        cmd += ["--preview", "2"]  # as `just convert` does
    print("+", " ".join(cmd), flush=True)
    t = time.perf_counter()
    rc = subprocess.call(cmd, cwd=REPO)
    return {"stage": stage, "command": " ".join(["pipe", *cmd[3:]]), "rc": rc,
            "wall_s": round(time.perf_counter() - t, 1)}


def collect(category: str, times: list[dict[str, Any]]) -> None:
    """Print the stage table, write ``bench/results/gpu-<device>.json`` and pack the report for ``$OUT``."""
    env = environment(select_device("auto"))
    name = env["device_name"] if env["device"].startswith("cuda") else "cpu"
    total = sum(t["wall_s"] for t in times)
    for t in times:
        print(f"{t['stage']:<10} {t['wall_s']:>8.1f} s  rc {t['rc']}")
    print(f"{'total':<10} {total:>8.1f} s  on {name}")
    result = {"device_name": name, "stages": times, "total_s": round(total, 1), "cached_weights": cached_weights(),
              "environment": env}
    out = write_json(REPO / "bench" / "results" / f"gpu-{name.replace(' ', '_')}.json", result)
    dest = Path(os.environ.get("OUT", WORK))
    runs = REPO / "runs" / category
    with tarfile.open(dest / "results.tgz", "w:gz") as tar:
        tar.add(out, arcname=out.name)
        for rel in ("report.md", "report.html", "summary.json", "logs", "yolo/metrics.json", "sam/metrics.json",
                    "classify/metrics.json", "classify/attempts.md"):
            if (runs / rel).exists():
                tar.add(runs / rel, arcname=rel)
    print(f"wrote {out} and {dest / 'results.tgz'}")


def plan(chunks: int) -> None:
    """The device calls, in order, each with its carry list."""
    install = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
               "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;")
    print(f"carry ['.whl']: {install} python3 bench/gpu.py unpack")
    for k in range(1, chunks + 1):
        print(f"carry ['.device/data-{k}']: python3 bench/gpu.py unpack")
    print("then, no carry, each prefixed with `export PYTHONPATH=/tmp/site;`:")
    for group in ("stats convert yolo", "sam", "classify report --collect"):
        print(f"  python3 bench/gpu.py run {group}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="here: split the category into carryable chunks under .device/")
    p.add_argument("--root", type=Path, default=Path(os.environ.get("MVTEC_ROOT", "../shared/data/mvtec")))
    p.add_argument("--category", default="bottle")
    p.add_argument("--chunk-mib", type=float, default=60.0, help="largest chunk; a call carries 64 MiB in all")
    sub.add_parser("unpack", help="there: merge the carried chunks into .device/mvtec")
    r = sub.add_parser("run", help="there: run and time stages, in order")
    r.add_argument("stages", nargs="+", choices=list(STAGES))
    r.add_argument("--category", default="bottle")
    r.add_argument("--profile", default="full", help="config profile (full on the GPU; tiny to try it here)")
    r.add_argument("--collect", action="store_true", help="then write the table, the JSON and $OUT/results.tgz")
    r.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="passed to every stage command")
    args = ap.parse_args()

    if args.cmd == "pack":
        chunks = pack(args.root, args.category, args.chunk_mib)
        print(f"{len(chunks)} chunks under {WORK}")
        plan(len(chunks))
    elif args.cmd == "unpack":
        print(f"moved {unpack()} files into {WORK / 'mvtec'}")
    else:
        log = WORK / "stages.json"
        times = read_json(log) if log.exists() else []
        for stage in args.stages:
            times = [t for t in times if t["stage"] != stage] + [run_stage(stage, args.category, WORK / "mvtec",
                                                                           args.profile, args.extra)]
            write_json(log, times)
            if times[-1]["rc"]:
                raise SystemExit(f"stage {stage} failed (rc {times[-1]['rc']}); see runs/{args.category}/logs/")
        if args.collect:
            collect(args.category, times)


if __name__ == "__main__":
    main()
