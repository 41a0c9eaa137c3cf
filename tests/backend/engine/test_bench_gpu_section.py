"""`make bench` section 4's measuring code, dry-run on the CPU so it cannot rot where CI has no GPU."""
import math

from benchmarks import run_all
from benchmarks.models import build_model


def test_gpu_case_times_the_loop_and_each_precision_and_compares_labels(tmp_path):
    rows, figures = run_all._gpu_case(tmp_path, "dry", build_model("dummy"), 300, 128, 2, 128, 1, device="cpu")
    assert [r[0].split(",")[0] for r in rows] == ["plain loop", "engine", "engine", "engine"]
    assert [r[0].split(", ")[1] for r in rows[1:]] == ["fp32", "fp16 mixed", "bf16 mixed"]
    for tag in ("fp32", "fp16", "bf16"):
        assert figures[f"{tag}_mps"] > 0 and figures[f"{tag}_finite"]
        # on the CPU the CUDA autocast choice does not apply: every run is fp32, so labels match exactly
        assert figures[f"{tag}_agreement"] == 1.0
        assert math.isnan(figures[f"{tag}_peak_mb"])  # GPU memory is only read on a GPU
    assert figures["loop_fp32_mps"] > 0 and (tmp_path / "dry_loop.tif").exists()
    assert figures["fp32_first_run_s"] > 0 and "fp16_compiled_mps" not in figures


def test_gpu_case_adds_a_compiled_row_and_times_its_compiling_run(tmp_path, monkeypatch):
    from backend.inference import predictors
    compiles = []
    # compiling for real takes minutes on a CPU: a stand-in that says it compiled
    monkeypatch.setattr(predictors, "compile_module", lambda module: (compiles.append(module) or module, True))
    rows, figures = run_all._gpu_case(tmp_path, "dry", build_model("dummy"), 200, 128, 2, 128, 1, device="cpu",
                                      compiled=True)
    assert rows[-1][0] == "engine, fp16 mixed, compiled, tile 128, batch 2" and len(compiles) == 1
    assert figures["fp16_compiled_agreement"] == 1.0 and figures["fp16_compiled_first_run_s"] > 0

    monkeypatch.setattr(predictors, "compile_module", lambda module: (module, False))  # e.g. no C++ compiler
    rows, _ = run_all._gpu_case(tmp_path, "dry2", build_model("dummy"), 200, 128, 2, 128, 1, device="cpu",
                                compiled=True)
    assert rows[-1][0] == "engine, fp16 mixed, compiled (compiling failed: ran eager), tile 128, batch 2"


def test_gpu_section_says_why_it_is_skipped_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all.torch.cuda, "is_available", lambda: False)
    results = {}
    assert "skipped (no CUDA GPU" in run_all.bench_gpu(tmp_path, 256, results) and results == {}


def test_gpu_check_says_there_is_nothing_to_check_without_a_gpu(repo_root):
    import subprocess
    import sys

    from ...conftest import repo_env
    run = subprocess.run(["bash", str(repo_root / "scripts" / "gpu_check.sh"), sys.executable], capture_output=True,
                         text=True, timeout=120, env=repo_env(CUDA_VISIBLE_DEVICES=""))
    assert run.returncode == 2 and "no CUDA GPU visible to torch" in run.stderr, run.stderr[-500:]
