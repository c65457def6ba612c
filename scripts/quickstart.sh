#!/usr/bin/env bash
# One command: install everything, write the default model, start the whole mesh on examples/local.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec muxserve up --config examples/local.yaml "$@"
