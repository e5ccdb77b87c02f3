"""``jaxreg.train.distributed.initialize``: a no-op for one process, clear errors for an
incomplete multi-process setup (the 2-process run is in tests/sharding)."""

import pytest

from jaxreg.train import distributed


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch):
    for name in distributed.ENVIRONMENT.values():
        monkeypatch.delenv(name, raising=False)


def test_single_process_is_a_no_op():
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False


def test_incomplete_arguments_are_named(monkeypatch):
    with pytest.raises(ValueError, match=r"missing: `num_processes` \(or \$JAX_NUM_PROCESSES\), "
                                         r"`process_id` \(or \$JAX_PROCESS_ID\)"):
        distributed.initialize("localhost:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match=r"missing: `coordinator_address` "
                                         r"\(or \$JAX_COORDINATOR_ADDRESS\)"):
        distributed.initialize(process_id=0)


def test_bad_values_are_named(monkeypatch):
    with pytest.raises(ValueError, match=r"`process_id` must be in \[0, 2\), got 2"):
        distributed.initialize("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="`coordinator_address` must be 'host:port'"):
        distributed.initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match="`num_processes` must be a positive integer"):
        distributed.initialize("localhost:1", 0, 0)
    monkeypatch.setenv("JAX_PROCESS_ID", "one")
    with pytest.raises(ValueError, match=r"\$JAX_PROCESS_ID must be an integer, got 'one'"):
        distributed.initialize("localhost:1", 2)
