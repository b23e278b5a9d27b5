"""dashboard/projections.py: the randomized views draw from their own generator, never the global RNG.

Several sessions' script threads run at once in one server process; a projection that seeds and
restores the process-wide RNG changes what another thread's ``torch.rand`` returns (and is itself
changed by it).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from dashboard.projections import mds_2d, pca_2d


def _filters() -> torch.Tensor:
    return torch.randn(600, 72, generator=torch.Generator().manual_seed(3))


def test_projections_leave_the_global_rng_alone_while_other_threads_draw_from_it():
    filters = _filters()
    distances = torch.cdist(filters, filters)
    expected_pca, expected_mds = pca_2d(filters), mds_2d(distances)
    torch.manual_seed(7)
    first, second = torch.rand(64), torch.rand(64)  # what a seeded thread draws, undisturbed
    stop = threading.Event()
    wrong_draws: list[int] = []
    pictures: list[bool] = []

    def seeded_user() -> None:  # another session: seeds, then draws twice
        for attempt in range(300):
            torch.manual_seed(7)
            a, b = torch.rand(64), torch.rand(64)
            if not (torch.equal(a, first) and torch.equal(b, second)):
                wrong_draws.append(attempt)
        stop.set()

    def projector() -> None:
        while not stop.is_set():
            pictures.append(np.array_equal(pca_2d(filters), expected_pca) and np.array_equal(mds_2d(distances), expected_mds))

    threads = [threading.Thread(target=seeded_user), threading.Thread(target=projector)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pictures and all(pictures), "a projection changed while another thread used the global RNG"
    assert not wrong_draws, f"another thread's seeded draws changed {len(wrong_draws)} times of 300"


def test_a_projection_does_not_move_the_global_rng():
    torch.manual_seed(11)
    state = torch.random.get_rng_state()
    pca_2d(_filters())
    assert torch.equal(torch.random.get_rng_state(), state)
