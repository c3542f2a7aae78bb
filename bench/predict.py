"""End-to-end `pipe predict` speed (detector + SAM + classifier): images per second and each part's share, PyTorch
against ONNX Runtime, in one run on the same images.

PatchCore (the good-only detector) is left out on purpose: it is not exported and runs in PyTorch under either
backend, so it would add the same time to both sides and only blur the comparison. `pipe predict` runs it too;
its own speed is in `pipe anomaly`'s metrics (``ms_per_image``).

    just all && python bench/predict.py                  # the embedded default's models, on the CPU
    python bench/predict.py --runs runs --repeat 5 --conf 0.05

Both backends go through ``pipeline.predict.run.run_predict`` (the command's own loop: read, detect, classify, then
SAM image by image) on every image of the converted dataset (train, val and test: more images, steadier times),
``--repeat`` rounds taken round-robin; each backend's figure is its median round. The ONNX files are exported
(and verified) into a temporary folder first, so the user's ``runs/`` is only read. SAM's image encoder is
counted: it must run once per image that has boxes, however many boxes it has. Prints a table, writes JSON.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _shared import finish, parser

from pipeline.config import load_config
from pipeline.device import environment, select_device
from pipeline.predict.models import Trained, load_trained
from pipeline.predict.run import PredictOptions, categories, run_predict
from pipeline.workspace import SPLITS, Workspace

TASKS = ("detector", "segmenter", "classifier")
PARTS = ("read", "detector", "segmenter", "classifier")


def count_encodes(models: Trained) -> list[int]:
    """Wrap the segmenter's ``set_image`` (the encoder's one entry point) with a counter."""
    calls = [0]
    inner = models.segmenter.set_image

    def counted(image: Any) -> None:
        calls[0] += 1
        inner(image)

    models.segmenter.set_image = counted
    return calls


def main() -> None:
    ap = parser(__doc__, "predict")
    ap.add_argument("--runs", default="runs", help="paths.runs holding runs/<category>/ with the trained models")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per backend (the median is reported)")
    ap.add_argument("--conf", type=float, default=None, help="box score threshold (default: the config's)")
    args = ap.parse_args()

    cfg = load_config(args.category, args.profile or "cpu", overrides=[f"paths.runs={args.runs}", *args.set])
    device = select_device(cfg.device)
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    ws = Workspace.from_config(cfg, {"export": work / "export"})
    images = [ws.dataset.coco.images(s) for s in SPLITS]
    n_images = sum(len(list(p.iterdir())) for p in images)
    conf = cfg.predict.box_conf(cfg) if args.conf is None else args.conf

    from pipeline.export.run import run_export
    from pipeline.export.runtime import load_exported

    report = run_export(cfg, ws, ["onnx"], device, conf)
    # both backends on the same device, with the same mask threshold `pipe predict` uses
    mask_threshold = cfg.predict.mask_threshold
    backends = {"torch": load_trained(ws, cfg, device, tasks=TASKS, mask_threshold=mask_threshold),
                "onnx": load_exported(ws, cfg, device=device, mask_threshold=mask_threshold)}
    encodes = {k: count_encodes(m) for k, m in backends.items()}
    cats = categories(backends["torch"].detector.names, ws.dataset.coco.annotations("test"))
    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in backends}
    boxes: dict[str, int] = {}
    with_boxes: dict[str, int] = {}
    for r in range(args.repeat):
        for name, models in backends.items():
            o = PredictOptions(conf, cfg.predict.nms_iou(cfg), cfg.predict.batch, backend=name)
            before = encodes[name][0]
            s = run_predict(models, images, work / f"{name}-{r}", o, cats, {})
            s["encodes"] = encodes[name][0] - before
            records = [json.loads(x) for x in (work / f"{name}-{r}" / "predictions.jsonl").read_text().splitlines()]
            boxes[name] = sum(len(x["boxes"]) for x in records)
            with_boxes[name] = sum(bool(x["boxes"]) for x in records)
            rounds[name].append(s)

    def median(name: str) -> dict[str, Any]:
        runs = rounds[name]
        ms = {p: statistics.median(s["ms_per_image"].get(p, 0.0) for s in runs) for p in PARTS}
        total = sum(ms.values())
        return {"images_per_s": round(statistics.median(s["images_per_s"] for s in runs), 3),
                "ms_per_image": {p: round(v, 3) for p, v in ms.items()},
                "share": {p: round(v / total, 3) if total else None for p, v in ms.items()},
                "boxes": boxes[name], "encoder_runs": runs[-1]["encodes"],
                "images_with_boxes": with_boxes[name]}

    result_rows = {name: median(name) for name in backends}
    speedup = result_rows["onnx"]["images_per_s"] / result_rows["torch"]["images_per_s"]
    env = environment(device)
    result = {"bench": "predict", "category": args.category, "data": "converted dataset of " + str(ws.dataset.root),
              "device": device, "device_name": env["device_name"], "environment": env, "images": n_images,
              "repeat": args.repeat, "conf": conf, "backends": result_rows, "onnx_over_torch": round(speedup, 3),
              "export_checks_passed": report.get("passed"), "models": backends["torch"].files(),
              "left_out": "anomaly (PatchCore): not exported, it runs in PyTorch under both backends"}
    rows: list[tuple[str, Any]] = [("images", n_images), ("box threshold", conf),
                                   ("models", "detector + SAM + classifier (PatchCore left out: PyTorch in both)")]
    for name, r in result_rows.items():
        rows += [(f"{name}: images/s", r["images_per_s"]),
                 *((f"{name}: {p} ms/image (share)", f"{r['ms_per_image'][p]:.2f} ({r['share'][p]:.0%})")
                   for p in PARTS),
                 (f"{name}: boxes / images with boxes / SAM encoder runs",
                  f"{r['boxes']} / {r['images_with_boxes']} / {r['encoder_runs']}")]
    rows.append(("onnx / torch images per second", f"{speedup:.2f}x"))
    finish("predict", rows, result, args.json, work)


if __name__ == "__main__":
    main()
