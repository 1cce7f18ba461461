"""The `ifp` command layer: the only place that parses arguments and names experiments.

One module per sub-command, each with `add_parser(subparsers)` registering its arguments and a
`run(args)` the parser dispatches to; `main.py` assembles them and turns user errors into one
line. `resolve.py` turns an experiment name + overrides into a config (the only importer of
`ifp_jax.experiments` besides the demo and compare commands).

Start-up: a command imports only what it uses, inside `run`. `--help`, `list` and `config`
import neither JAX nor TensorFlow/SeqIO; TensorFlow comes in (quietly, ifp_jax/tf_import.py)
only with the data pipeline. The library (everything in ifp_jax outside commands/,
experiments/ and benchmarks/) never imports this package (tests/test_layout.py).
"""
