"""The pool that scores videos in worker processes while other work goes on (--test scores
one video while the next is segmented; utils.evaluate scores a whole folder).

Workers are spawned (safe under CUDA and on every platform), use one OpenCV thread each and
ignore Ctrl-C and SIGTERM: the main process stops them, so an interrupted run shows no worker traceback.
This module imports no torch, so workers start quickly.
"""
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Generic, Iterator, List, TypeVar, Union

import cv2

from utils.cli import ignore_interrupts

Result = TypeVar('Result')


def _init_worker() -> None:
    ignore_interrupts()
    cv2.setNumThreads(1)


class ScoringPool(Generic[Result]):
    """Runs score(job) inline (workers <= 1) or in worker processes; results come back in the
    order the jobs were submitted. Use it as a context manager: on an error or Ctrl-C the
    jobs not started yet are cancelled."""

    def __init__(self, workers: int) -> None:
        self._pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'),
                                          initializer=_init_worker) if workers > 1 else None)
        self._results: List[Union[Future, Result]] = []

    def submit(self, score: Callable[[Any], Result], job: Any) -> None:
        self._results.append(self._pool.submit(score, job) if self._pool else score(job))

    def results(self) -> Iterator[Result]:
        """Every result in submission order, waiting for the workers (their errors are raised here)."""
        for result in self._results:
            yield result.result() if isinstance(result, Future) else result

    def __enter__(self) -> 'ScoringPool[Result]':
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        """A clean exit waits for the jobs still running but returns before idle workers exit
        (every result is in; the process joins them when it ends); an error cancels the jobs not
        started yet."""
        if self._pool is not None:
            finished = all(r.done() for r in self._results if isinstance(r, Future))
            self._pool.shutdown(wait=exc_type is None and not finished, cancel_futures=exc_type is not None)
