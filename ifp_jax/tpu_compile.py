"""What `ifp compile EXPERIMENT --topology NAME` does: the full joint train step (predictor +
SoftTopK + masked LLM + optimizer update) compiled ahead of time for a real TPU slice, on this
host.

libtpu's topology descriptions stand in for the chips: XLA's TPU compiler lays the step out for
that slice and reports per-chip memory and its cost model, with no TPU attached. The step is the
one `ifp train` runs (train/compiled.py), with the experiment's per-hardware defaults for the
slice's family and the user's overrides on top.
"""

from __future__ import annotations

import dataclasses
import time

import jax

from ifp_jax import flops as flops_lib
from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, ExperimentConfig
from ifp_jax.hardware import Slice
from ifp_jax.platform import name_target_slice_to_libtpu

GIB = 2 ** 30
LEVERS = ("try mesh.fsdp=-1 (shard the state over every chip), model.remat_policy=full, "
          "optimizer.grad_accum_steps=<2x>, train.logits_chunk_len=512, a smaller "
          "data.global_batch_size, or a larger slice")


@dataclasses.dataclass
class CompileReport:
    experiment: str
    topology: str
    devices: int
    mesh: dict
    argument_gib: float
    output_gib: float
    alias_gib: float
    temp_gib: float
    code_gib: float
    total_gib: float
    hbm_gib: float
    model_flops_per_step: float
    model_flops_per_device: float
    compiler_flops_per_device: float | None
    compiler_seconds: float | None
    compiler_counts_all_layers: bool
    implied_mfu: float | None
    compile_seconds: float
    compute_dtype: str
    attention: str
    checkpoint_gb: float = 0.0  # one checkpoint on disk: params + optimizer state, all devices
    slices: int = 1  # TPU slices joined over DCN (multislice)
    mesh_lines: tuple[str, ...] = ()  # sharding.describe_mesh: how the mesh lies on the chips

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.hbm_gib


def topology_devices(s: Slice, num_slices: int = 1) -> list:
    """The compile-only devices of `num_slices` copies of slice `s` (several: multislice, each
    device with its slice_index, as on a real multislice job)."""
    name_target_slice_to_libtpu(s.name)  # read once, when libtpu loads
    try:
        from jax.experimental import topologies
        extra = {"num_slices": num_slices} if num_slices > 1 else {}
        topo = topologies.get_topology_desc(platform="tpu", topology_name=s.topology_name,
                                            **extra)
    except Exception as e:  # noqa: BLE001 - libtpu missing or refusing: one line
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        if "lockfile" in first:
            fix = "another process holds libtpu (/tmp/libtpu_lockfile): run one at a time"
        elif "divisible" in first or "layout" in first.lower():
            fix = "choose a slice of at least one host (e.g. v5e-4)"
        else:
            fix = "is libtpu installed? `pip install -e '.[tpu]'`"
        raise ConfigError(f"cannot describe TPU topology {s.topology_name} ({first}); {fix}"
                          ) from None
    return list(topo.devices)


def compile_for_slice(cfg: ExperimentConfig, s: Slice, num_slices: int = 1) -> CompileReport:
    """AOT-compiles cfg's train step for `num_slices` x slice `s`; the figures are per device
    (chip or core)."""
    from ifp_jax.data import tasks
    from ifp_jax.train.compiled import compile_train_step
    from ifp_jax.train import preflight
    from ifp_jax.train.optim import make_optimizer
    from ifp_jax.train.state import build_model, state_layout

    devices = topology_devices(s, num_slices)
    mesh = shd.make_mesh(cfg.mesh, devices=devices)
    mesh_lines = tuple(shd.describe_mesh(mesh, dcn_data=cfg.mesh.dcn_data))
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    num_tasks = len(tasks.mixture_rates(cfg.data))
    model = build_model(cfg, platform="tpu")
    tx = make_optimizer(cfg.optimizer, cfg.train.steps)
    layout = state_layout(model, cfg, tx, mesh)
    t0 = time.time()
    try:
        compiled = compile_train_step(model, cfg, tx, layout=layout, mesh=mesh,
                                      num_tasks=num_tasks)
    except jax.errors.JaxRuntimeError as e:
        first = str(e).splitlines()[0]
        if "RESOURCE_EXHAUSTED" not in first:
            raise
        # XLA's TPU compiler refuses a program that cannot fit HBM: same message, its figures.
        raise ConfigError(f"{cfg.name} does not fit {_name(s.name, num_slices)}: {first[:300]}; "
                          + LEVERS) from None
    seconds = time.time() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older JAX returned one dict per program
        cost = cost[0] if cost else {}
    arg, out = mem.argument_size_in_bytes / GIB, mem.output_size_in_bytes / GIB
    alias, temp = mem.alias_size_in_bytes / GIB, mem.temp_size_in_bytes / GIB
    code = mem.generated_code_size_in_bytes / GIB
    model_flops = flops_lib.train_step_flops(cfg)["total"]
    per_device = model_flops / len(mesh.devices.flat)
    compiler_flops = cost.get("flops")
    compiler_s = cost.get("optimal_seconds")
    if compiler_s is not None and compiler_s <= 0:  # the cost model had no estimate
        compiler_s = None
    # XLA's cost model counts a while loop's body once: with layers under nn.scan (and
    # micro-batches under lax.scan) its totals cover one layer, so no MFU is implied from them.
    complete = (not cfg.model.scan_layers and not cfg.predictor.backbone.scan_layers
                and cfg.optimizer.grad_accum_steps == 1)
    mfu = None
    if complete and compiler_s and compiler_s > 0:
        mfu = per_device / (compiler_s * s.family.peak_bf16_tflops_per_device * 1e12)
    return CompileReport(
        experiment=cfg.name, topology=s.name, devices=len(devices), mesh=dict(mesh.shape),
        argument_gib=arg, output_gib=out, alias_gib=alias, temp_gib=temp, code_gib=code,
        total_gib=arg + out - alias + temp + code, hbm_gib=s.family.hbm_gib_per_device,
        model_flops_per_step=model_flops, model_flops_per_device=per_device,
        compiler_flops_per_device=compiler_flops, compiler_seconds=compiler_s,
        compiler_counts_all_layers=complete, implied_mfu=mfu, compile_seconds=seconds,
        compute_dtype=jax.numpy.dtype(model.dtype).name, attention=model.model_cfg.attention,
        checkpoint_gb=preflight.state_bytes(layout.abstract) / preflight.GB,
        slices=num_slices, mesh_lines=mesh_lines)


def _name(slice_name: str, num_slices: int) -> str:
    return f"{num_slices} x {slice_name}" if num_slices > 1 else slice_name


def format_report(r: CompileReport, cfg: ExperimentConfig) -> str:
    unit = "core" if r.topology.startswith("v4") else "chip"
    lines = [
        f"{r.experiment} on {_name(r.topology, r.slices)} ({r.devices} devices, mesh {r.mesh}), "
        f"compiled in {r.compile_seconds:.0f}s",
        *(f"  {line}" for line in r.mesh_lines),
        f"  batch {cfg.data.global_batch_size} x {cfg.data.seq_len} tokens, "
        f"{cfg.optimizer.grad_accum_steps} micro-batch(es), remat {cfg.model.remat_policy}, "
        f"{r.compute_dtype}, logits chunk {cfg.train.logits_chunk_len or 'none'}, "
        f"attention {r.attention}",
        f"  per-{unit} memory (GiB): arguments {r.argument_gib:.2f}, outputs {r.output_gib:.2f}, "
        f"aliased -{r.alias_gib:.2f}, temporaries {r.temp_gib:.2f}, code {r.code_gib:.2f}",
        f"  total {r.total_gib:.2f} of {r.hbm_gib:.0f} GiB HBM ({100 * r.total_gib / r.hbm_gib:.0f}%)"
        f" -> {'fits' if r.fits else 'DOES NOT FIT'}",
        f"  model FLOPs per step {r.model_flops_per_step:.3e} ({r.model_flops_per_device:.3e} per "
        f"{unit})",
        f"  checkpoint disk: {r.checkpoint_gb:.3g} GB per checkpoint (params and optimizer "
        f"state), {(cfg.checkpoint.keep + 1) * r.checkpoint_gb:.3g} GB at peak "
        f"(checkpoint.keep={cfg.checkpoint.keep}, +1 while the newest is written)",
    ]
    if r.compiler_flops_per_device is not None:
        secs = "no time estimate" if r.compiler_seconds is None else f"{r.compiler_seconds:.3f} s"
        est = f"  compiler cost model: {r.compiler_flops_per_device:.3e} FLOPs, {secs} per {unit}"
        if r.implied_mfu is not None:
            est += f" -> implied MFU {100 * r.implied_mfu:.1f}%"
        else:
            est += (" (XLA counts a scanned loop body once: these cover one layer; compile "
                    "with model.scan_layers=false predictor.backbone.scan_layers=false for the "
                    "implied MFU)")
        lines.append(est)
    return "\n".join(lines)


def does_not_fit_message(r: CompileReport, cfg: ExperimentConfig) -> str:
    return (f"{r.experiment} does not fit {_name(r.topology, r.slices)}: {r.total_gib:.1f} GiB per device "
            f"(arguments {r.argument_gib:.1f}, temporaries {r.temp_gib:.1f}) > "
            f"{r.hbm_gib:.0f} GiB HBM; " + LEVERS)
