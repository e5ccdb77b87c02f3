import os

# Tests run on the CPU; 8 fake devices let the sharding tests build a mesh.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
