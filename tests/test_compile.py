"""`ifp compile`: AOT compilation of the joint train step for real TPU topologies (libtpu's
topology descriptions, no TPU), per-chip memory against HBM, and its errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ifp_jax import experiments
from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, MeshConfig
from ifp_jax.hardware import parse_slice
from ifp_jax import tpu_compile
from ifp_jax.commands.resolve import registered

pytest.importorskip("libtpu", reason="libtpu comes with the test extra (jax[tpu])")

TINY = ["data.global_batch_size=8", "model.d_model=64", "model.n_layers=2", "model.d_ffn=128",
        "pruning.keep_k=32", "predictor.backbone.n_layers=1", "predictor.max_prompt_len=32"]


@pytest.fixture(scope="module")
def tiny_v5e_report():
    s = parse_slice("v5e-4")
    cfg = registered("tiny_multiskill", TINY + ["model.attention=xla"], hardware=s.family.name)
    return cfg, tpu_compile.compile_for_slice(cfg, s)


def test_tiny_config_compiles_for_v5e_4_and_reports_memory(tiny_v5e_report):
    cfg, r = tiny_v5e_report
    assert r.devices == 4 and r.mesh == {"data": 4, "fsdp": 1, "tensor": 1}
    assert r.hbm_gib == 16.0 and r.fits
    # Arguments hold the whole train state once (replicated over 'data'): params + 2 Adam moments.
    assert 0 < r.argument_gib < 0.1 and r.total_gib > 0
    assert r.model_flops_per_step > 0 and r.compute_dtype == "bfloat16"  # auto -> bf16 on TPU
    text = tpu_compile.format_report(r, cfg)
    assert "per-chip memory (GiB): arguments" in text and "fits" in text
    # The checkpoint holds the state once; with 'data' replication each chip's arguments hold
    # the whole state plus its share of the batch.
    assert 0.5 * r.argument_gib * 1.073741824 < r.checkpoint_gb < r.argument_gib * 1.073741824
    assert f"checkpoint disk: {r.checkpoint_gb:.3g} GB per checkpoint" in text


def test_splash_attention_compiles_for_tpu():
    """'auto' attention is the Pallas splash kernel on TPU when T tiles into 128-blocks."""
    s = parse_slice("v5e-4")
    cfg = registered("tiny_multiskill", TINY + ["data.seq_len=128", "model.max_len=128"],
                     hardware=s.family.name)
    r = tpu_compile.compile_for_slice(cfg, s)
    assert r.attention == "splash" and r.fits


def test_too_large_a_config_is_refused_with_figures_and_levers():
    s = parse_slice("v5e-4")
    cfg = registered("tiny_multiskill", hardware=s.family.name, overrides=TINY + [
        "model.vocab_size=2400000", "model.d_model=2048", "model.n_heads=16",
        "model.head_dim=128", "model.attention=xla"])
    with pytest.raises(ConfigError) as e:
        tpu_compile.compile_for_slice(cfg, s)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert "does not fit v5e-4" in msg and "HBM" in msg and "mesh.fsdp=-1" in msg


@pytest.mark.parametrize("name, message", [
    ("v5p-100", "no standard v5p slice"), ("v9-8", "unknown TPU generation"),
    ("banana", "use a slice name like v5p-128")])
def test_unknown_topology_is_a_one_line_error(name, message):
    with pytest.raises(ConfigError, match=message):
        parse_slice(name)


def test_slice_names_map_to_topologies():
    assert parse_slice("v5p-128").topology_name == "v5p:4x4x4"  # 64 chips (v5p counts cores)
    assert parse_slice("v5e-256").topology_name == "v5e:16x16"
    assert parse_slice("v5litepod-16").name == "v5e-16"
    assert parse_slice("v4-64").num_devices == 64  # 32 chips, 2 devices each


def test_paper_experiments_take_hardware_defaults_and_overrides():
    cfg = experiments.get("paper_9b_to_3b", hardware="v5e")
    assert (cfg.model.d_ffn, cfg.pruning.keep_k, cfg.model.n_layers) == (24576, 6656, 56)
    assert cfg.mesh.fsdp == -1 and cfg.train.logits_chunk_len == 512
    assert experiments.get("paper_6b_to_3b").model.d_ffn == 16384


def test_cli_unknown_topology_exits_2_with_one_line():
    p = subprocess.run([sys.executable, "-m", "ifp_jax", "compile", "paper_9b_to_3b",
                        "--topology", "v5p-100"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("ifp: error: no standard v5p slice")


def test_compile_prints_nothing_on_stderr_on_a_host_without_tpu():
    """libtpu's start-up warnings (no TPU metadata on this host) are not the user's business."""
    from ifp_jax.platform import tpu_may_be_present
    if tpu_may_be_present():
        pytest.skip("a TPU may be present: libtpu finds its own metadata here")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    out = subprocess.run([sys.executable, "-m", "ifp_jax", "compile", "tiny_multiskill",
                          "--topology", "v5e-4", *TINY, "model.attention=xla"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "fits" in out.stdout
    assert out.stderr == ""



def _ids(devices) -> list[int]:
    return [d.id for d in np.asarray(devices).flat]


def test_v5p_128_mesh_follows_the_torus_and_feeds_every_row_once():
    """v5p-128: 64 chips (4x4x4), 16 hosts of 4. The mesh is mesh_utils' topology-aware order;
    each host's chips are scattered along the batch, and the hosts still feed disjoint blocks
    covering the global batch."""
    from jax.experimental import mesh_utils
    devices = tpu_compile.topology_devices(parse_slice("v5p-128"))
    assert len(devices) == 64
    for cfg, shape in ((MeshConfig(data=1, fsdp=-1), (1, 64, 1)),
                       (MeshConfig(data=2, fsdp=-1, tensor=2), (2, 16, 2))):
        mesh = shd.make_mesh(cfg, devices=devices)
        assert tuple(mesh.shape.values()) == shape
        assert _ids(mesh.devices) == _ids(mesh_utils.create_device_mesh(
            shape, devices, allow_split_physical_axes=True))
    assert _ids(mesh.devices) != _ids(devices)  # not jax's device order
    mesh = shd.make_mesh(MeshConfig(data=1, fsdp=-1), devices=devices)
    sharding = shd.batch_sharding(mesh, 1)
    host0 = sorted(i[0].start for d, i in sharding.devices_indices_map((64,)).items()
                   if d.process_index == 0)
    assert host0 == [0, 4, 16, 20]  # why process_batch_rows cannot ask for the rows held
    blocks = sorted(shd.process_batch_rows(sharding, 256, p) for p in range(16))
    assert blocks == [(16 * p, 16 * (p + 1)) for p in range(16)]
    lines = shd.describe_mesh(mesh)
    assert lines[0] == "mesh data 1 x fsdp 64 x tensor 1: 1 slice(s), 16 host(s), 4 devices per host"
    assert lines[1].startswith("devices in mesh order (id:(x,y,z)@host): 0:(0,0,0)@0 16:(0,0,1)@4")


def test_two_v5e_256_slices_make_a_hybrid_mesh_with_data_over_dcn():
    from jax.experimental import mesh_utils
    devices = tpu_compile.topology_devices(parse_slice("v5e-256"), num_slices=2)
    assert len(devices) == 512
    mesh = shd.make_mesh(MeshConfig(data=1, fsdp=-1, dcn_data=2), devices=devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 256, "tensor": 1}
    assert _ids(mesh.devices) == _ids(mesh_utils.create_hybrid_device_mesh(
        (1, 256, 1), (2, 1, 1), devices, allow_split_physical_axes=True))
    assert [{d.slice_index for d in mesh.devices[i].flat} for i in range(2)] == [{0}, {1}]
    assert shd.describe_mesh(mesh, dcn_data=2)[0] == (
        "mesh data 2 x fsdp 256 x tensor 1 = dcn (2, 1, 1) x ici (1, 256, 1): 2 slice(s), "
        "128 host(s), 4 devices per host")
    with pytest.raises(ConfigError, match=r"^mesh.dcn_data=1 but the 512 devices are in 2 "
                                          r"slice\(s\); set mesh.dcn_data=2$"):
        shd.make_mesh(MeshConfig(data=1, fsdp=-1), devices=devices)
    with pytest.raises(ConfigError, match=r"global_batch_size=256 does not split over mesh data "
                                          r"x fsdp = 2 x 256; use a multiple of 512"):
        shd.check_batch_divisible(mesh, 256)
