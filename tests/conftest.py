import os
import pathlib
import sys

# Tests run on the CPU, on one device as a user's machine has; tests/sharding runs its tests
# in subprocesses with 8 fake devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # numeric.py, shared by every test folder
