# The Python backend loads this file from <repository>/<model>/<version>/model.py.
# Its embedded interpreter ignores PYTHONPATH, so put the environment that `tritonctl serve` names on sys.path,
# then hand over to the runner that lives (and is tested) in the tritonctl package.
import os
import sys

for _path in reversed(os.environ.get("TRITONCTL_SITE_PACKAGES", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)

from tritonctl.model.cpu_runner import TritonPythonModel  # noqa: E402,F401
