import os

# nothing in the suite may reach a model hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# a Ray call after ray.shutdown() (Serve's handle threads make some) must not start a new Ray
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")

import sys

import pytest


@pytest.fixture(autouse=True, scope="module")
def _ray_down_after_module():
    """Each module starts its own Ray; none may leak one into the next module."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _quiet_serve_threads_at_exit():
    """Serve's handle threads outlive the test Rays and log a failed metrics push at exit."""
    yield
    import logging

    logging.getLogger("ray.serve").disabled = True
