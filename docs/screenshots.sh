#!/usr/bin/env bash
# Redraws docs/compare_report.png and docs/tensorboard_hparams.png from a real (small) sweep:
#   1. a 3-job learning-rate sweep of unet_small on the built-in shapes (CSV + TensorBoard logs),
#   2. python src/compare.py on the sweep folder, screenshotted in headless Chromium,
#   3. tensorboard --logdir <sweep folder> on localhost, its HParams table screenshotted.
# Usage: docs/screenshots.sh [extra train.py overrides...]   (about 2 minutes on 2 CPU cores)
# Needs Debian's `chromium` on PATH; PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
PORT=${PORT:-60066}
work=$(mktemp -d)
tb_pid=""
cleanup() {
    if [ -n "$tb_pid" ]; then kill "$tb_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

shoot() {  # shoot URL PNG WIDTHxHEIGHT
    chromium --headless --no-sandbox --disable-gpu --user-data-dir="$work/chromium" \
        --hide-scrollbars --virtual-time-budget=10000 --window-size="$3" \
        --screenshot="$2" "$1" 2>/dev/null
}

export OMP_NUM_THREADS=1 WANDB_MODE=offline
"$PYTHON" src/train.py -m optimizer.lr=0.0003,0.001,0.003 trainer.accelerator=cpu \
    trainer.max_epochs=6 data.image_size=64 'data.num_samples={train: 96, val: 24, test: 8}' \
    'logger=[csv,tensorboard]' "paths.log_dir=$work/logs" "$@" >"$work/train.out" 2>&1 ||
    { tail -n 40 "$work/train.out"; exit 1; }
sweep=$(ls -d "$work"/logs/train/multiruns/*/)

"$PYTHON" src/compare.py "$sweep" --title "python src/compare.py: optimizer.lr sweep" \
    --output "$work/report/compare.html"
shoot "file://$work/report/compare.html" docs/compare_report.png 1280,2700

"$PYTHON" -m tensorboard.main --logdir "$sweep" --host 127.0.0.1 --port "$PORT" \
    >"$work/tensorboard.out" 2>&1 &
tb_pid=$!
# ready once the HParams plugin lists the three jobs' sessions
for _ in $(seq 60); do
    if "$PYTHON" - "$PORT" <<'EOF' 2>/dev/null; then break; fi
import json, sys, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/data/plugin/hparams/session_groups"
statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
body = json.dumps({"experimentName": "", "allowedStatuses": statuses, "colParams": [],
                   "startIndex": 0, "sliceSize": 10}).encode()
request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
groups = json.load(urllib.request.urlopen(request, timeout=2)).get("sessionGroups", [])
sys.exit(0 if len(groups) == 3 else 1)
EOF
    sleep 1
done
shoot "http://127.0.0.1:$PORT/#hparams" docs/tensorboard_hparams.png 1280,900
echo "wrote docs/compare_report.png and docs/tensorboard_hparams.png"
