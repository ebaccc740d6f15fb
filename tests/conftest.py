"""Test session set-up: no test may reach for a model hub (this machine has no network to one).

huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported (timm imports it), so the
flag must be set before any test module imports anything."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def torchrun(tmp_path):
    """torchrun(code) runs the Python lines `code` in 2 CPU processes (gloo, one torch thread each;
    a hang fails after 120 s with every thread's stack) and returns the CompletedProcess."""
    def run(code: str, nproc: int = 2) -> subprocess.CompletedProcess:
        script = tmp_path / "torchrun_script.py"
        script.write_text("import faulthandler, torch\nfaulthandler.dump_traceback_later(120, exit=True)\n"
                          f"torch.set_num_threads(1)\n{code}\n")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                               str(nproc), str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    return run


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny models: two threads on two cores only fight)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# The quick tier (`make test-quick`: pytest -m "not slow"): tests/slow_tests.txt lists the tests that took
# more than two seconds in the last full run (`make test-durations` measures them again and rewrites it).
SLOW = {line.strip() for line in (ROOT / "tests" / "slow_tests.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")} if (ROOT / "tests" / "slow_tests.txt").exists() else set()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in SLOW or item.nodeid.split("[")[0] in SLOW:
            item.add_marker(pytest.mark.slow)
