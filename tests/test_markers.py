"""The ``requires_cuda`` marker: GPU tests are collected everywhere, skipped without a GPU (the
conftest hook), and run where ``torch.cuda.is_available()``."""

import subprocess
import sys

import pytest
import torch

from conftest import REPO


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the requires_cuda tests run instead")
def test_gpu_tests_are_skipped_without_a_gpu_not_failed():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "requires_cuda",
                           "tests/test_train_policies.py", "tests/test_generate.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert "2 skipped" in summary and "passed" not in summary and "failed" not in summary, proc.stdout[-3000:]
    assert proc.stdout.count("needs a CUDA GPU") == 2, proc.stdout[-3000:]
