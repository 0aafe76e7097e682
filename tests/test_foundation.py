"""Profiles, paths, results schema, seeding, student edition."""
import os
import platform
import stat
import subprocess
import sys

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell

from prostate_course import paths
from prostate_course.editions import STUB, student_notebook, stub_solution
from prostate_course.io_utils import atomic_path, config_hash
from prostate_course.profile import available_profiles, load_profile, parse_override
from prostate_course.repro import freeze_imports, get_device, seed_everything
from prostate_course.results import Results, load_results, validate_results


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu", "full"])
def test_profiles_have_the_contract_keys(name):
    p = load_profile(name)
    assert p.name == name
    assert set(p.data) >= {"source", "n_cases", "seed", "spacing", "crop"}
    assert len(p.data["spacing"]) == 3 and len(p.data["crop"]) == 3
    assert p.label_fractions == sorted(p.label_fractions) and p.label_fractions[-1] == 1.0
    assert p.seeds and p.device == "auto"


def test_profile_sizes_follow_the_design():
    smoke, cpu, gpu, full = (load_profile(n) for n in ("smoke", "cpu", "gpu", "full"))
    assert smoke.data["n_cases"] == 40 and smoke.label_fractions == [0.25, 0.5, 1.0] and len(smoke.seeds) == 1
    # cpu: enough test patients for a paired half-width near 0.05 at the smallest budget (about 200),
    # and more seeds where training is cheap
    assert cpu.data["n_cases"] * cpu.data["split"]["test_fraction"] >= 200 and cpu.label_fractions[0] == 0.05
    assert len(cpu.protocol_seeds[0.05]) >= 3 > len(cpu.seeds)
    assert gpu.data["crop"][1:] == [128, 128] and len(gpu.seeds) == 3
    assert full.data["source"] == "picai" and len(full.seeds) == 5
    assert available_profiles() == ["cpu", "full", "gpu", "smoke"]


def test_overrides_are_dotted_and_typed():
    p = load_profile("smoke", dict([parse_override("data.n_cases=12"), parse_override("protocol.finetune.epochs=1"),
                                    parse_override("notebooks.01.imagenet_download=true")]))
    assert p.data["n_cases"] == 12 and p.protocol["finetune"]["epochs"] == 1
    assert p.notebook("01_transfer_learning")["imagenet_download"] is True
    assert load_profile("smoke").data["n_cases"] == 40  # the shipped file is untouched
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_override("oops")


def test_paths_are_absolute_and_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PROSTATE_COURSE_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("PROSTATE_COURSE_RUNS", "relative/runs")
    assert paths.data_root() == tmp_path / "d"
    assert paths.run_root("cpu").is_absolute() and paths.run_root("cpu").name == "cpu"
    monkeypatch.delenv("PROSTATE_COURSE_DATA")
    assert paths.data_root() == paths.repo_root() / "data"


def test_results_roundtrip_and_validation(tmp_path):
    r = Results("01_transfer_learning.ipynb", "smoke", seeds=[0], device="cpu")
    r.add_row(task="classification", method="scratch", label_fraction=0.25, seed=0,
              auroc_patient=np.float32(0.75), auroc_slice=float("nan"))
    r.unavailable("imagenet", "offline")
    path = r.save(tmp_path)
    assert path.name == "01_transfer_learning.json"
    loaded = load_results(tmp_path)["01_transfer_learning"]
    assert loaded["rows"][0]["auroc_patient"] == pytest.approx(0.75)
    assert loaded["rows"][0]["auroc_slice"] is None
    assert loaded["peak_rss_mb"] > 0 and loaded["versions"]["torch"]
    with pytest.raises(ValueError, match="task"):
        r.add_row(task="segmentation", method="x", label_fraction=1, seed=0)
    bad = dict(loaded, rows=[{"task": "classification", "method": "x"}])
    with pytest.raises(ValueError, match="row 0 lacks"):
        validate_results(bad, "bad.json")


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_path_files_get_the_usual_permissions(tmp_path):
    """Files written atomically are readable like any other file the process writes (umask),
    not 0600 as mkstemp makes them: a shared data folder (JupyterHub, a course server) must
    let other users read cases.csv, cache.pt and the marksheet."""
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.csv") as tmp:
            tmp.write_text("x")
        (tmp_path / "plain.csv").write_text("x")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.csv") == mode(tmp_path / "plain.csv") == 0o644


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_same_seed_same_numbers_on_cpu():
    seed_everything(3)
    a = torch.nn.Linear(4, 2)(torch.randn(5, 4)).sum().item(), np.random.rand()
    seed_everything(3)
    b = torch.nn.Linear(4, 2)(torch.randn(5, 4)).sum().item(), np.random.rand()
    assert a == b
    assert get_device("auto").type in ("cpu", "cuda", "mps")


def test_student_edition_stubs_solutions():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        new_markdown_cell("Exercise"),
        new_code_cell("answer = 42", metadata={"tags": ["solution"]}),
        new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
                      metadata={"tags": ["solution"]}),
        new_code_cell("assert answer == 42"),
    ]
    student, n = student_notebook(nb)
    assert n == 2
    assert "answer = 42" not in student.cells[1].source and STUB in student.cells[1].source
    assert student.cells[2].source.startswith("def f(x):\n    # YOUR CODE HERE")
    assert "return 2 * x" not in student.cells[2].source
    assert student.cells[3].source == "assert answer == 42"
    assert nb.cells[1].source == "answer = 42"  # the instructor copy is untouched
    with pytest.raises(ValueError, match="without"):
        stub_solution("### BEGIN SOLUTION\nx = 1")


def test_override_of_an_unknown_key_warns():
    with pytest.warns(UserWarning, match="no key 'protocol.finetune.epoch'"):
        p = load_profile("smoke", {"protocol.finetune.epoch": 5})
    assert p.protocol["finetune"]["epochs"] == 2  # the real setting is untouched
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # a protocol default the YAML leaves out is known
        assert load_profile("smoke", {"protocol.val_share": 0.25}).protocol["val_share"] == 0.25
    with pytest.raises(ValueError, match="not a section"):
        load_profile("smoke", {"data.n_cases.x": 1})
    import warnings as w
    with w.catch_warnings():
        w.simplefilter("error")
        load_profile("smoke", {"data.synth": {"lesion_contrast": 1.0}, "data.n_cases": 8})


def test_session_reports_the_device_it_uses():
    from prostate_course import course

    s = course.start("01_x", "smoke", {"device": "cpu"}, quiet=True)
    assert str(s.device) == "cpu" and s.environment["device"] == "cpu"


def test_profiles_memory_limit_download_folds_and_split():
    import warnings as w

    from prostate_course.data.splits import split_settings

    smoke, cpu, gpu, full = (load_profile(n) for n in ("smoke", "cpu", "gpu", "full"))
    assert smoke.memory_limit_mb == cpu.memory_limit_mb == 1500  # Binder kills at 2 GB
    assert 8000 <= gpu.memory_limit_mb <= 12500 and full.memory_limit_mb is None  # Colab: ~12.7 GB
    assert gpu.download_folds == [0] and full.download_folds == [0, 1, 2, 3, 4]
    for p, test in ((smoke, 0.25), (cpu, 0.5), (gpu, 0.25)):  # the course split; validation from inside each budget
        assert split_settings(p.data["split"]) == {"scheme": "course", "test_fraction": test, "val_fraction": 0.0}
    assert split_settings(full.data["split"])["scheme"] == "picai_official"
    with w.catch_warnings():
        w.simplefilter("error")  # the split keys are known keys: no "check the spelling" warning
        p = load_profile("cpu", {"data.split.val_fraction": 0, "memory_limit_mb": 2000})
    assert p.data["split"]["val_fraction"] == 0 and p.memory_limit_mb == 2000


_FAULTS_OF_TWENTY_STEPS = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from prostate_course.repro import tune_allocator
    assert tune_allocator()
torch.manual_seed(0); torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 1, 1))
opt = torch.optim.Adam(net.parameters())
x = torch.randn(16, 3, 64, 64)          # 16 MiB activations, as a 05 validation batch
def step():
    opt.zero_grad(set_to_none=True); net(x).square().mean().backward(); opt.step()
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt thresholds are glibc's")
def test_tuned_allocator_lets_training_steps_reuse_pages_instead_of_faulting_them_anew():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS_OF_TWENTY_STEPS, mode], capture_output=True,
                             text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return int(out.stdout.split()[-1])

    default, tuned = faults("default"), faults("tuned")
    # measured: 600,000-800,000 page faults with glibc's default thresholds, under 5,000 tuned
    assert tuned * 10 < default, (default, tuned)


def test_frozen_imports_leave_the_collector_only_later_objects():
    import gc
    import weakref

    try:
        frozen = freeze_imports(("json",))
        assert frozen == gc.get_freeze_count() > 1000
        assert len(gc.get_objects()) < 1000      # the collector no longer walks what was alive

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a                  # a cycle made after the freeze: still collected
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
