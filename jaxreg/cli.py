"""The ``jaxreg`` command: browse the catalog, run an experiment, diagnose a run, train a
grid, benchmark."""

from __future__ import annotations

import argparse
import os
import sys

GRID_HELP = """Train an MLP on digits with a catalog loss over a hyperparameter grid, all
configurations x seeds as one vmapped program. Each --set NAME=V1,V2,... gives one value per
configuration (all lists the same length), or use --product for their Cartesian product.
NAME is a hyperparameter of the loss or one of the optimizer's (learning_rate,
weight_decay: AdamW)."""


def _cmd_list(args) -> int:
    from jaxreg import catalog
    try:
        print(catalog.page() if args.page else catalog.table(args.family) + "\n", end="")
    except KeyError as err:
        raise UsageError(err.args[0]) from None
    return 0


def _cmd_show(args) -> int:
    import pathlib

    import jaxreg
    from jaxreg import catalog
    try:
        entry = catalog.get(args.name)
    except KeyError as err:
        raise UsageError(err.args[0]) from None
    tests = None
    root = pathlib.Path(jaxreg.__file__).resolve().parents[1]
    if (root / "tests").is_dir():  # a clone: the test files that name the entry
        tests = catalog.tests_naming(entry, {
            str(path.relative_to(root)): path.read_text()
            for path in sorted((root / "tests").rglob("test_*.py"))})
    print(catalog.describe(entry, tests))
    return 0


class UsageError(Exception):
    """A bad name or argument: reported in one line, without a traceback."""


def _cmd_run(args, rest) -> int:
    from jaxreg.protocol import runner
    try:
        runner.load(args.experiment)
    except (KeyError, FileNotFoundError) as err:
        raise UsageError(err.args[0]) from None
    try:
        runner.main(args.experiment, rest)
    except (runner.RunDirectoryError, runner.ConfigError) as err:
        raise UsageError(str(err)) from None
    return 0


def _cmd_diagnose(args) -> int:
    from jaxreg.protocol import diagnose
    try:
        payload = diagnose.diagnose(args.run_dir, experiment=args.experiment, out_dir=args.out)
    except diagnose.DiagnoseError as err:
        raise UsageError(str(err)) from None
    print(diagnose.table(payload))
    out = args.out if args.out is not None else args.run_dir
    print(f"wrote {os.path.join(out, 'diagnostics.md')}, diagnostics.json and landscape.png",
          file=sys.stderr)
    return 0


def _parse_sets(items):
    values = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not text:
            raise UsageError(f"--set expects NAME=V1,V2,..., got {item!r}")
        try:
            values[name] = [float(v) for v in text.split(",")]
        except ValueError:
            raise UsageError(f"--set {name}: values must be numbers, got {text!r}") from None
    return values


def _cmd_grid(args) -> int:
    import jax.numpy as jnp
    import optax

    from jaxreg import catalog, data, models, train
    from jaxreg.protocol.report import markdown_table, mean_std, write_json

    try:
        entry = catalog.get(args.loss)
    except KeyError as err:
        raise UsageError(err.args[0]) from None
    if entry.inputs != "logits, labels":
        raise UsageError(f"`jaxreg grid` trains losses taking (logits, labels); {entry.name} "
                         f"takes ({entry.inputs})")
    values = _parse_sets(args.set)
    optimizer_names = {"learning_rate", "weight_decay"}
    unknown = set(values) - set(entry.hparams) - optimizer_names
    if unknown:
        raise UsageError(f"unknown hyperparameter(s) {sorted(unknown)} for {entry.name}; "
                         f"valid: {sorted(set(entry.hparams) | optimizer_names)}")
    if args.product:
        values = train.product(**values)
    values.setdefault("learning_rate", [1e-3] * len(next(iter(values.values()), [0])))
    lengths = {k: len(v) for k, v in values.items()}
    if len(set(lengths.values())) != 1:
        raise UsageError(f"--set value lists must have the same length (one value per "
                         f"configuration), got {lengths}; use --product for a Cartesian grid")
    train_set, test_set = data.load_digits("train"), data.load_digits("test")
    labels = train_set["label"]
    if args.noise > 0:
        labels = data.symmetric_noise(labels, args.noise, 10, seed=0)
    model = models.mlp(train_set["image"].shape[1:], 10)
    loss_names = [n for n in values if n in entry.hparams]

    def objective(params, batch, hparams, key):
        logits = model.apply(params, batch["image"])
        kwargs = {n: hparams[n] for n in loss_names}
        return {entry.name: entry.fn(logits, batch["label"], **kwargs).mean()}

    test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])

    def evaluate(state, member):
        return {"test_accuracy": jnp.mean(jnp.argmax(model.apply(state.params, test_x), -1)
                                          == test_y)}

    optimizer = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.0)
    mesh = None
    if args.shard:
        import jax
        if len(values["learning_rate"]) % jax.device_count():
            raise UsageError(f"--shard: {len(values['learning_rate'])} configurations cannot be "
                             f"split evenly over {jax.device_count()} devices")
        mesh = train.make_mesh(grid=-1, data=1)
    result = train.grid(objective, optimizer, model.init,
                        {"image": train_set["image"], "label": labels}, hparams=values,
                        seeds=range(args.seeds), epochs=args.epochs,
                        batch_size=args.batch_size, evaluate=evaluate, mesh=mesh)
    acc = result.history["eval/test_accuracy"]
    rows = [[result.label(k), mean_std(acc[k].max(-1)), mean_std(acc[k, :, -1])]
            for k in range(len(result.configs))]
    print(markdown_table(["configuration", "best test acc", "last test acc"], rows))
    if args.out:
        write_json({"loss": entry.name, "noise": args.noise, "configs": result.configs,
                    "seeds": result.seeds,
                    "test_accuracy": acc.tolist()}, os.path.join(args.out, "grid.json"))
    return 0


BENCHMARKS = ("overhead", "scaling", "grid", "multiobjective")


def benchmarks_directory() -> str:
    """``benchmarks/`` of the checkout jaxreg runs from (an editable install), else of the
    current directory."""
    import pathlib

    import jaxreg

    for root in (pathlib.Path(jaxreg.__file__).resolve().parents[1], pathlib.Path.cwd()):
        if (root / "benchmarks" / "_common.py").exists():
            return str(root / "benchmarks")
    raise UsageError("no benchmarks/ folder: run `jaxreg bench` from a clone of the "
                     "repository (pip install -e .)")


def _cmd_bench(args, rest) -> int:
    import datetime
    import subprocess

    folder = benchmarks_directory()
    names = args.names or ["overhead", "scaling"]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UsageError(f"unknown benchmark(s) {unknown}; available: {', '.join(BENCHMARKS)}")
    sections = [f"# Benchmarks ({datetime.date.today().isoformat()})", "",
                "Written by `jaxreg bench`; each section is the script's own output, its ratios "
                "measured side by side in one run."]
    for name in names:
        print(f"jaxreg bench: {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, os.path.join(folder, f"{name}.py"), *rest],
                              cwd=folder, capture_output=True, text=True)
        if proc.returncode:
            raise UsageError(f"benchmarks/{name}.py failed:\n{proc.stderr[-3000:]}")
        print(proc.stdout)
        sections += ["", f"## `benchmarks/{name}.py`", "", "```", proc.stdout.rstrip(), "```"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(sections) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxreg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="print the catalog")
    p.add_argument("--family", help="only this family")
    p.add_argument("--page", action="store_true", help="the whole docs/catalog.md page")
    p = sub.add_parser("show", help="one catalog entry: signature, paper, reference, tests")
    p.add_argument("name", help="a catalog name, e.g. generalized_cross_entropy")
    p = sub.add_parser("run", help="run an experiment (jaxreg run NAME --help)", add_help=False)
    p.add_argument("experiment")
    p = sub.add_parser("diagnose", help="Hessian, calibration and loss landscape of a run's "
                                        "checkpoint (jaxreg diagnose runs/pretrain)",
                       description="Restores the last checkpoint of RUN_DIR and measures, on a "
                                   "fixed evaluation batch, the Hessian's top eigenvalue (power "
                                   "iteration) and trace (Hutchinson), the expected calibration "
                                   "error and a 1-D filter-normalized loss landscape; writes "
                                   "diagnostics.md, diagnostics.json and landscape.png.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with checkpoints, e.g. "
                                                      "runs/pretrain")
    p.add_argument("--experiment", metavar="NAME",
                   help="the experiment that wrote it (default: from RUN_DIR's name)")
    p.add_argument("--out", metavar="DIR", help="write the files here (default: RUN_DIR)")
    p = sub.add_parser("grid", help="train a hyperparameter grid", description=GRID_HELP)
    p.add_argument("--loss", required=True, help="a catalog name, e.g. generalized_cross_entropy")
    p.add_argument("--set", action="append", default=[], metavar="NAME=V1,V2,...")
    p.add_argument("--product", action="store_true", help="Cartesian product of the --set lists")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--noise", type=float, default=0.0, help="symmetric label-noise rate")
    p.add_argument("--shard", action="store_true",
                   help="split the configurations over all devices (a jax.sharding.Mesh)")
    p.add_argument("--out", help="write grid.json here")
    p = sub.add_parser("bench", help="run benchmarks/ and write a markdown page",
                       description="Runs benchmark scripts of benchmarks/ (default: overhead "
                                   "and scaling) and writes their tables to one markdown file; "
                                   "arguments after -- go to every script.")
    p.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    p.add_argument("--out", default=os.path.join("runs", "bench", "benchmarks.md"))
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    extra = []
    if "--" in argv:
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "list":
            return _cmd_list(args)
        if args.command == "show":
            return _cmd_show(args)
        if args.command == "run":
            return _cmd_run(args, rest + extra)
        if args.command == "bench":
            return _cmd_bench(args, extra)
        if args.command == "diagnose":
            return _cmd_diagnose(args)
        return _cmd_grid(args)
    except UsageError as err:
        print(f"jaxreg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
