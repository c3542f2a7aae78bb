# pipe: `just all` runs the pipeline for one category; every step is its own recipe.
set shell := ["bash", "-euo", "pipefail", "-c"]
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

category := env_var_or_default("CATEGORY", "bottle")
# auto: full with CUDA, else cpu (the embedded default: small images, few epochs, random init allowed); or tiny
profile := env_var_or_default("PROFILE", "auto")

# list the recipes
default:
    @just --list

# every stage in one process (pipe all): real data if present, else the synthetic stand-in; up-to-date stages skipped (PIPE_FORCE=1 redoes them)
all *ARGS:
    pipe all {{category}} --fallback-synthetic --profile {{profile}} --set convert.preview=2 {{ARGS}}

# dataset card (falls back to the synthetic stand-in when no real data is present)
stats *ARGS:
    pipe stats {{category}} --fallback-synthetic --profile {{profile}} {{ARGS}}

# masks to YOLO boxes/polygons and COCO instances under datasets/<category>/, with splits.json
convert *ARGS:
    pipe convert {{category}} --fallback-synthetic --profile {{profile}} --set convert.preview=2 {{ARGS}}

# YOLO-World: zero-shot baseline, fine-tune, test mAP (runs/<category>/yolo/)
finetune-yolo *ARGS:
    pipe finetune yolo {{category}} --profile {{profile}} {{ARGS}}

# SAM: zero-shot vs fine-tuned decoder, prompted by true boxes and by the YOLO boxes (runs/<category>/sam/)
finetune-sam *ARGS:
    pipe finetune sam {{category}} --profile {{profile}} {{ARGS}}

# four backbone recipes, shared split + K-fold CV + long-tail comparison (runs/<category>/classify/)
classify *ARGS:
    pipe classify {{category}} --profile {{profile}} {{ARGS}}

# good-only detection: PatchCore on train/good, AUROC/AUPRO on MVTec's test set and the shared split (runs/<category>/anomaly/)
anomaly *ARGS:
    pipe anomaly {{category}} --profile {{profile}} {{ARGS}}

# good-only detection on every category under the data root, one table with the mean (runs/anomaly-all.md)
anomaly-all *ARGS:
    pipe anomaly-all --profile {{profile}} {{ARGS}}

# classification images per second per attempt, and the image cache (prints a table, writes bench/results/)
bench-classify *ARGS:
    python bench/classify.py --category {{category}} {{ARGS}}

# report.md, a self-contained report.html and summary.json under runs/<category>/
report *ARGS:
    pipe report {{category}} --profile {{profile}} {{ARGS}}

# SAM epoch time with and without the embedding cache (prints a table, writes bench/results/)
bench-sam *ARGS:
    python bench/sam.py --category {{category}} {{ARGS}}

# PatchCore: pipe's against anomalib's (bench-only .venv-bench/), same data and backbone weights (prints a table, writes bench/results/)
bench-anomaly *ARGS:
    test -x .venv-bench/bin/python || (python3 -m venv .venv-bench && .venv-bench/bin/pip install -r bench/requirements-anomalib.txt)
    MVTEC_ROOT="${MVTEC_ROOT:-../shared/data/mvtec}" python bench/anomaly.py --category {{category}} {{ARGS}}

# YOLO-World training throughput and inference latency (prints a table, writes bench/results/)
bench-yolo *ARGS:
    python bench/yolo.py --category {{category}} {{ARGS}}

# conversion speed vs ultralytics and the decode floor (prints a table, writes bench/results/)
bench-convert:
    MVTEC_ROOT="${MVTEC_ROOT:-../shared/data/mvtec}" python bench/convert.py --category {{category}}

# whole-process start-up: `pipe convert` vs ultralytics' converter, `just all` up to date vs `import torch`, `pipe --help`
bench-startup *ARGS:
    MVTEC_ROOT="${MVTEC_ROOT:-../shared/data/mvtec}" python bench/startup.py --category {{category}} {{ARGS}}

# generate the synthetic stand-in under datasets/synthetic
synth *ARGS:
    pipe synth {{category}} {{ARGS}}

# the test suite (what CI runs)
test *ARGS:
    python -m pytest -q {{ARGS}}

# the real-data checks, against the genuine MVTec AD (set MVTEC_ROOT, default ../shared/data/mvtec)
test-real:
    MVTEC_ROOT="${MVTEC_ROOT:-../shared/data/mvtec}" python -m pytest -q -m real_data
