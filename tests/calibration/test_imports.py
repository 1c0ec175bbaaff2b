from __future__ import annotations

import subprocess
import sys


def test_calibration_imports_without_paddleslim():
    code = (
        "import sys; sys.modules['paddleslim'] = None\n"
        "import calibration, calibration.config, calibration.calibration_set, calibration.ptq, calibration.budget, calibration.golden\n"
        "assert 'paddleslim' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "assert 'paddle' not in sys.modules, 'calibration must not import paddle at module level'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
