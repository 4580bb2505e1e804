"""How many ingress workers `smtp.workers` starts (a number as given, "auto" one per core
up to 4), and how a worker runs its signing: at once, on the calling thread."""

import threading

import pytest

from mta.clock import ManualClock, RealClock, ScaledClock
from mta.ingress.workers import InlineExecutor, worker_count


@pytest.mark.parametrize("cores", [1, 2, 8])
def test_a_number_is_taken_as_given(cores: int) -> None:
    assert worker_count(0, RealClock(), cores) == 0
    assert worker_count(3, RealClock(), cores) == 3


def test_auto_is_one_per_core_on_a_real_or_scaled_clock() -> None:
    assert worker_count("auto", RealClock(), 2) == 2
    assert worker_count("auto", ScaledClock(3600.0), 3) == 3
    assert worker_count("auto", RealClock(), 64) == 4  # past that the main process limits


def test_auto_stays_in_one_process_on_one_core_or_a_manual_clock() -> None:
    assert worker_count("auto", RealClock(), 1) == 0
    assert worker_count("auto", ManualClock(), 8) == 0


def test_a_worker_signs_on_the_calling_thread_and_keeps_the_error() -> None:
    ran_on: list[int] = []

    def work(x: int) -> int:
        ran_on.append(threading.get_ident())
        return x * 2

    done = InlineExecutor().submit(work, 21)
    assert done.done() and done.result() == 42 and ran_on == [threading.get_ident()]
    failed = InlineExecutor().submit(lambda: 1 // 0)
    assert isinstance(failed.exception(), ZeroDivisionError)
