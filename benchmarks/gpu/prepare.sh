#!/usr/bin/env bash
# Prepares, on a machine with a package index, the two ignored folders that benchmarks/gpu/check.sh carries
# to an accelerator machine that has torch, lightning, torchmetrics, numpy, scipy and PyYAML but no index:
#   .whl/          the CLI's pure-Python dependencies that such an image lacks (jsonargparse with its
#                  signature helpers, omegaconf), as py3-none-any wheels at the versions this venv uses;
#   .devdata/      TikTok in DiffMM's format (4.5 MB), copied from $LIT_MMREC_DATA or ../shared/data.
# Usage, from anywhere:  bash benchmarks/gpu/prepare.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
data=${LIT_MMREC_DATA:-$root/../shared/data}
if [ ! -f "$data/tiktok/trnMat.pkl" ]; then
  echo "prepare.sh: no TikTok data at $data/tiktok (trnMat.pkl missing); set LIT_MMREC_DATA to the folder that holds tiktok/" >&2
  exit 2
fi
rm -rf "$root/.whl" "$root/.devdata"
mkdir -p "$root/.devdata"
cp -r "$data/tiktok" "$root/.devdata/tiktok"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$root/.whl" \
  jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 omegaconf==2.4.0
ls "$root/.whl" "$root/.devdata/tiktok"
du -sh "$root/.whl" "$root/.devdata"
