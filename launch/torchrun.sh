#!/bin/bash
# torchrun works too (no accelerate config): one node, 2 CPU processes here; use --nproc_per_node 8 on a GPU box
# (drop train.cpu=true), and --nnodes/--node_rank/--rdzv_endpoint across nodes.
set -euo pipefail
torchrun --standalone --nproc_per_node "${NPROC:-2}" -m swift_scale.cli run --config "${1:-configs/digits_noise40.yaml}" train.cpu=true "${@:2}"
