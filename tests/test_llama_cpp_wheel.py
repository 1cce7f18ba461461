""".ci/llama_cpp_wheel.py: the llama-cpp-python wheel cache is keyed by everything the native
build depends on (a wheel built for one CPU is never handed to another), a cache hit does not
build, and the pin it builds is the one setup.cfg's extras name."""

import configparser
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "llama_cpp_wheel", os.path.join(ROOT, ".ci", "llama_cpp_wheel.py"))
lcw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lcw)

X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: sse2 fma avx2 avx512f sse2\n\n" \
      "processor\t: 1\nflags\t\t: sse2\n"


def test_pin_is_the_one_of_both_extras():
    req = lcw.pinned_requirement()
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    test_extra = cfg["options.extras_require"]["test"].split()
    assert [r for r in test_extra if r.startswith("llama-cpp-python")] == [req]


def test_cpu_flags_of_the_first_cpu(tmp_path):
    (tmp_path / "x86").write_text(X86)
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")
    assert lcw.cpu_flags(str(tmp_path / "x86")) == ["avx2", "avx512f", "fma", "sse2"]
    assert lcw.cpu_flags(str(tmp_path / "arm")) == ["asimd", "fp", "sve"]


def test_cache_key_changes_with_cpu_cmake_args_and_version(monkeypatch, tmp_path):
    monkeypatch.setenv("IFP_LLAMA_CPP_WHEELS", str(tmp_path))
    base = lcw.key_inputs("llama-cpp-python==0.3.36", lcw.CMAKE_ARGS, ["avx2", "fma"])
    here = lcw.cache_dir(base)
    assert os.path.dirname(here) == str(tmp_path)
    assert os.path.basename(here).startswith("llama-cpp-python-0.3.36-")
    assert lcw.cache_dir(dict(base)) == here  # deterministic
    for change in ({"cpu_flags": ["avx2"]}, {"cpu_flags": ["avx2", "avx512f", "fma"]},
                   {"cmake_args": "-DGGML_NATIVE=OFF"}, {"requirement": "llama-cpp-python==0.3.37"},
                   {"libc": "glibc-2.17"}, {"machine": "aarch64"}):
        assert lcw.cache_dir(dict(base, **change)) != here, change


def test_cache_hit_installs_without_building_and_a_damaged_entry_rebuilds(monkeypatch, tmp_path):
    monkeypatch.setenv("IFP_LLAMA_CPP_WHEELS", str(tmp_path))
    req = "llama-cpp-python==0.3.36"
    built = []

    def fake_build(requirement, out_dir):  # stands in for the 10-minute compile
        os.makedirs(out_dir)
        built.append(requirement)
        return os.path.join(out_dir, "w.whl")

    monkeypatch.setattr(lcw, "build", fake_build)
    out_dir = lcw.cache_dir(lcw.key_inputs(req, lcw.CMAKE_ARGS, lcw.cpu_flags()))
    os.makedirs(out_dir)
    wheel = os.path.join(out_dir, "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl")
    open(wheel, "w").close()
    assert lcw.cached_or_built_wheel(req) == wheel and built == []

    os.remove(wheel)  # an entry without its wheel is built again
    assert lcw.cached_or_built_wheel(req) == os.path.join(out_dir, "w.whl") and built == [req]
    assert os.path.exists(os.path.join(out_dir, "key.json"))


def test_installed_llama_cpp_is_the_pinned_version():
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: run "
                                    "`make setup` (or python .ci/llama_cpp_wheel.py)")
    assert "llama-cpp-python==" + llama_cpp.__version__ == lcw.pinned_requirement()
