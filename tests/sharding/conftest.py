"""Tests on 8 fake CPU devices, each run in its own interpreter.

XLA fixes the number of CPU devices when JAX starts, and the rest of the suite runs on one
device, as a user's laptop does. So every test in this folder is run again in a fresh
``pytest`` process started with ``--xla_force_host_platform_device_count=8``, and its result
is reported here; inside that process (``JAXREG_FAKE_DEVICES`` set) the test runs as usual.
"""

import os
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # problem.py

DEVICES = 8
_INSIDE = os.environ.get("JAXREG_FAKE_DEVICES") == str(DEVICES)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if _INSIDE:
        return None  # run the test here, on the fake devices
    env = {**os.environ, "JAXREG_FAKE_DEVICES": str(DEVICES), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
               "-p", "no:xdist", "-m", "", "--no-header", "-rN", pyfuncitem.nodeid]
    proc = subprocess.run(command, cwd=pyfuncitem.config.rootpath, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"on {DEVICES} fake devices (exit {proc.returncode}):\n"
                    f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    return True


@pytest.fixture
def devices():
    """The 8 fake devices (None in the parent process, which only starts the test)."""
    if not _INSIDE:
        return None
    import jax

    assert jax.device_count() == DEVICES, jax.devices()
    return jax.devices()
