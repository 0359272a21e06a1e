"""The vst Style Transfer node for Nuke: thin glue over `vst_plugin.jobs`.

Importing this package makes `vst_plugin` and its few dependencies importable in Nuke's Python:
`site-packages/` beside this package (filled with ``pip install --target``) and the vst checkout this
folder sits in, when it holds `vst_plugin/`. A `vst_plugin` already importable (installed into
Nuke's Python or on PYTHONPATH) is used as it is.
"""

import os
import sys

_NUKE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHECKOUT = os.path.dirname(_NUKE_DIR)

for _path in (os.path.join(_NUKE_DIR, "site-packages"), _CHECKOUT):
    if _path == _CHECKOUT and not os.path.isfile(os.path.join(_CHECKOUT, "vst_plugin", "__init__.py")):
        continue
    if os.path.isdir(_path) and _path not in sys.path:
        sys.path.append(_path)
