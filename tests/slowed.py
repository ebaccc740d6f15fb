"""Jobs slowed down so that a test's kill or second writer lands while they work: on an idle machine
45 ESC-50 clips prepare in 0.43 s and ten 6 s files embed in 0.12 s, faster than a test can react."""
from __future__ import annotations

import time

DELAY = 0.5                              # seconds added to each block / file; a test may lower it


def slow_prepare_blocks(delay: float = DELAY) -> None:
    """Slow every block of `pipeline.prepare` in this process and in workers it forks afterwards."""
    global DELAY
    import pipeline.prepare as p
    DELAY = delay
    if p._run_block is not slow_block:
        p.unslowed_run_block, p._run_block = p._run_block, slow_block


def slow_block(task):                    # module-level: pickled by reference into pool workers
    import pipeline.prepare as p
    time.sleep(DELAY)
    return p.unslowed_run_block(task)


def slow_embed_files(delay: float = DELAY) -> None:
    """Slow every file `train.use.embed_files` embeds in this process."""
    import train.use.embed_files as ef
    real = ef._embed_one

    def slowly(*args):
        time.sleep(delay)
        return real(*args)
    ef._embed_one = slowly
