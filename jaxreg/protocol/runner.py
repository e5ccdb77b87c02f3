"""Finding and running the experiment programs: ``jaxreg run NAME``.

An experiment is a program, not library code: ``experiments/NAME.py`` at the top of the
repository (``NAME`` with underscores; the command takes it with hyphens: ``noisy-labels``),
beside ``jaxreg/``. It defines

- ``get_config(variant=DEFAULT) -> ml_collections.ConfigDict``: the whole protocol (data,
  model, optimizer, schedule, losses and their hyperparameters, epochs, batch size, seeds),
  with a ``variant`` field naming it;
- ``run(config, out_dir, progress) -> dict``: trains, writes its results in ``out_dir`` and
  returns their JSON payload;
- optionally ``quick(config) -> config``: the pipeline at toy size (``--quick``; the
  ``--set`` overrides apply after it).

Modules whose name starts with ``_`` are helpers of the others, not experiments. The
directory is found beside the installed ``jaxreg`` package (a clone installed with
``pip install -e .``, as the README does) or in the working directory: experiments read and
write files of a checkout (``docs/results``, ``runs/``), so they ship with it rather than
with the wheel.

:func:`main` parses ``--config`` (a variant, ``FILE.py[:VARIANT]`` or a saved
``config.json``), ``--set FIELD=VALUE`` (repeatable), ``--quick``, ``--out``,
``--overwrite`` and ``--no-progress``; guards the run directory (:class:`RunDirectory`);
writes ``config.json`` there before the run starts; and calls ``run``.
"""

from __future__ import annotations

import argparse
import difflib
import fcntl
import importlib
import json
import os
import pathlib
import shutil
import sys
from types import ModuleType

import ml_collections

from jaxreg.protocol import config as config_lib

PACKAGE = "experiments"


class RunDirectoryError(RuntimeError):
    """A run directory that holds another run's results, or that another run is using."""


class ConfigError(ValueError):
    """A ``--config`` or ``--set`` that names no config, no field, or a value of the wrong
    type."""


def experiments_directory() -> pathlib.Path:
    """``experiments/`` of the checkout ``jaxreg`` is installed from, else of the working
    directory."""
    import jaxreg

    for root in (pathlib.Path(jaxreg.__file__).resolve().parents[1], pathlib.Path.cwd()):
        if (root / PACKAGE / "__init__.py").exists():
            return root / PACKAGE
    raise FileNotFoundError(
        "no experiments/ folder: experiments run from a clone of the repository (`pip "
        "install -e .` in it, or run `jaxreg run` from its top folder)")


def names() -> list[str]:
    """The experiments' command names (``noisy-labels``, ...), sorted."""
    return sorted(path.stem.replace("_", "-") for path in experiments_directory().glob("*.py")
                  if not path.stem.startswith("_"))


def load(name: str) -> ModuleType:
    """The module of experiment ``name``; an unknown name lists the valid ones."""
    available = names()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise KeyError(f"unknown experiment {name!r}{hint}; available: {', '.join(available)}")
    root = str(experiments_directory().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"{PACKAGE}.{name.replace('-', '_')}")


class RunDirectory:
    """Holds ``out_dir`` for one run: refuses a directory that another process is writing
    to (an exclusive ``flock`` on ``out_dir/.lock``, released when the process ends, even by
    SIGKILL), and one that holds another run's results (a ``config.json`` that differs from
    this run's), unless ``overwrite``, which empties it first. The same config again is
    allowed: a run that resumes from its checkpoints, or repeats itself.
    """

    def __init__(self, out_dir: str | os.PathLike, config: ml_collections.ConfigDict, *,
                 overwrite: bool = False):
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.config = config
        self.overwrite = overwrite
        self._lock = None

    def __enter__(self) -> str:
        os.makedirs(self.out_dir, exist_ok=True)
        self._lock = open(os.path.join(self.out_dir, ".lock"), "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RunDirectoryError(
                f"{self.out_dir} is in use by another run (it holds the lock "
                f"{os.path.join(self.out_dir, '.lock')}); wait for it or choose another "
                "--out") from None
        saved = os.path.join(self.out_dir, "config.json")
        if os.path.exists(saved):
            with open(saved) as f:
                old = json.load(f)
            new = json.loads(self.config.to_json())
            if old != new:
                if not self.overwrite:
                    self.__exit__(None, None, None)
                    raise RunDirectoryError(
                        f"{self.out_dir} holds the results of another run; its config.json "
                        "differs:\n  " + "\n  ".join(_differences(old, new))
                        + "\nChoose another --out, or pass --overwrite to replace them.")
                for entry in os.listdir(self.out_dir):
                    if entry != ".lock":
                        path = os.path.join(self.out_dir, entry)
                        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        config_lib.save(self.config, self.out_dir)
        return self.out_dir

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def _differences(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new))
                for line in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    if old == new:
        return []
    return [f"{prefix.rstrip('.')}: was {old!r}, now {new!r}"]


def parser(name: str, module: ModuleType) -> argparse.ArgumentParser:
    """The command line of ``jaxreg run NAME``."""
    default = module.get_config()
    p = argparse.ArgumentParser(prog=f"jaxreg run {name}", description=module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="SPEC",
                   help=f"a variant of this experiment (default: {default.variant}), "
                        f"FILE.py[:VARIANT] (a file with get_config(variant)), or a saved "
                        "config.json, which repeats that run")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one config field, e.g. optimizer.learning_rate=0.05 or "
                        "model.hidden=512,512 (repeatable; unknown fields are named)")
    if hasattr(module, "quick"):
        p.add_argument("--quick", action="store_true",
                       help="the pipeline at toy size: checks it runs, not the claims")
    p.add_argument("--out", default=None,
                   help=f"run directory (default: runs/{name}[-VARIANT])")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of another run in --out")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(name: str, argv: list[str] | None = None) -> dict:
    """Runs experiment ``name`` with command-line arguments ``argv``; returns its payload."""
    module = load(name)
    args = parser(name, module).parse_args(argv)
    try:  # --set last, so that it also adjusts a --quick run
        config = config_lib.load(args.config, module.get_config)
        if getattr(args, "quick", False):
            config = module.quick(config)
        config = config_lib.override(config, args.set)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise ConfigError(err.args[0] if err.args else str(err)) from None
    default_variant = module.get_config().variant
    out_dir = args.out or os.path.join(
        "runs", name if config.variant == default_variant else f"{name}-{config.variant}")
    with RunDirectory(out_dir, config, overwrite=args.overwrite) as out_dir:
        payload = module.run(config, out_dir, not args.no_progress)
        if getattr(args, "quick", False):
            _mark_quick(out_dir)
        return payload


QUICK_NOTE = ("(A `--quick` run: the pipeline at toy size. Its verdicts are not evidence "
              "about the claims.)")


def _mark_quick(out_dir: str) -> None:
    """Appends :data:`QUICK_NOTE` to the run's ``results.md``, so that a toy run's verdicts
    are never read as a result."""
    path = os.path.join(out_dir, "results.md")
    if os.path.exists(path):
        with open(path, "a") as f:
            f.write("\n" + QUICK_NOTE + "\n")
        print(QUICK_NOTE)
