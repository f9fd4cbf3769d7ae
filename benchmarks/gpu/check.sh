#!/usr/bin/env bash
# One-shot accelerator check for issues 2 and 3: CUDA paths of every model, then TikTok epoch times.
# Run `bash benchmarks/gpu/prepare.sh` first (here), then on the accelerator machine, in one call:
#   run(command="bash benchmarks/gpu/check.sh", carry=[".whl", ".devdata"], timeout_s=540)
# Results land in $OUT (or the folder given as $1) as eight files, the device tool's limit: summary.txt
# (versions, and each step's status and seconds), fits.log (every model's synthetic fit on the device),
# dense_products.json, diffcl_/dasrec_tiktok_{float32,bfloat16}.json (epoch times) and stderr.log.
# A dry run on a CPU, with the same steps at one epoch each:  DEVICE=cpu EPOCHS=1 bash benchmarks/gpu/check.sh /tmp/gpu_dry
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-${OUT:-$root/outputs/gpu_check}}
device=${DEVICE:-cuda}
epochs=${EPOCHS:-3}
mkdir -p "$out"
cd "$root"
site=$(mktemp -d)
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
fi
export PYTHONPATH="$root:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
export LIT_MMREC_DATA=${LIT_MMREC_DATA:-$root/.devdata} LIT_MMREC_CACHE=$site/cache LIT_MMREC_OUTPUT=$site/runs
if [ "$device" = cuda ]; then accelerator=gpu; else accelerator=cpu; fi
summary="$out/summary.txt"
rm -f "$out"/*.txt "$out"/*.log "$out"/*.json

step() {  # step FILE LABEL COMMAND...: run one step into FILE, note its status and seconds in summary.txt
  # a .json step keeps stdout (the report) in FILE and its stderr in stderr.log; other steps append both
  local name=$1 label=$2; shift 2
  local start=$SECONDS rc
  if [[ $name == *.json ]]; then
    echo "==== $name: $*" >> "$out/stderr.log"
    "$@" > "$out/$name" 2>> "$out/stderr.log"
  else
    echo "==== $*" >> "$out/$name"
    "$@" >> "$out/$name" 2>&1
  fi
  rc=$?
  echo "$label: rc=$rc, $((SECONDS - start)) s" | tee -a "$summary.steps"
}

step summary.txt versions python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__); print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# every model's training, validation and test steps on the device (synthetic data, one epoch)
for model in lightgcn bpr vbpr freedom mgcn bm3 lattice lgmrec slmrec mmgcn grcn dualgnn dragon diffcl dasrec diffmm; do
  step fits.log "fit $model" python3 -m lit_mmrec.cli fit --config "configs/experiment/${model}_synthetic.yaml" \
    --trainer.accelerator "$accelerator" --trainer.max_epochs 1 --trainer.logger false --trainer.enable_progress_bar false
done
step dense_products.json "dense products" python3 benchmarks/dense_products.py --device "$device"
for precision in float32 bfloat16; do
  step "diffcl_tiktok_${precision}.json" "DiffCL TikTok $precision" python3 benchmarks/bench_training.py \
    --config configs/experiment/diffcl_tiktok.yaml --epochs "$epochs" --val-passes 2 -- \
    --trainer.accelerator "$accelerator" --model.init_args.denoiser_precision "$precision"
  step "dasrec_tiktok_${precision}.json" "DASRec TikTok $precision" python3 benchmarks/bench_dasrec_epoch.py --device "$device" \
    --epochs "$epochs" --config configs/experiment/dasrec_tiktok.yaml "denoiser_precision=$precision"
done
cat "$summary.steps" >> "$summary" && rm "$summary.steps"
cat "$summary"
