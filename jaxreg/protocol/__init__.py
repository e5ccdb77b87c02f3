"""What every experiment shares: its protocol as one config, its run directory, its claims.

- :mod:`jaxreg.protocol.config`: load a config (a variant, a file, a saved ``config.json``),
  override it field by field, save it beside the results.
- :mod:`jaxreg.protocol.runner`: find the experiment programs of ``experiments/`` and run one
  (``jaxreg run NAME``): parse ``--config``/``--set``/``--quick``/``--out``, guard the run
  directory, save the config, call the experiment.
- :mod:`jaxreg.protocol.report`: claims with their verdicts, tables, JSON.
"""

from jaxreg.protocol import config, report, runner

__all__ = ["config", "report", "runner"]
