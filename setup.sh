#!/usr/bin/env bash
# Set up a virtual environment in .venv with mpt-tui and its test dependencies.
# On a machine without a GPU, torch==2.13.0 takes the CPU build; on a GPU server,
# install your CUDA build of torch into .venv first and run with MPT_TUI_KEEP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
if [ -z "${MPT_TUI_KEEP_TORCH:-}" ]; then
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
