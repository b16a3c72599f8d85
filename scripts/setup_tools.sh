#!/usr/bin/env bash
# Native tools `make setup` provides beyond pip: none yet beyond the Python environment.
set -euo pipefail
exit 0
