"""The experiments: one program per paper claim, reproduced small (``jaxreg run NAME``).

Each module defines ``get_config(variant)`` (the whole protocol, one
``ml_collections.ConfigDict``), ``run(config, out_dir, progress)`` and usually
``quick(config)``; ``jaxreg.protocol.runner`` finds them and runs one. Modules starting with
``_`` are helpers, not experiments.
"""
