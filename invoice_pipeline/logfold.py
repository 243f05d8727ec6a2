"""Repeated warnings folded into one line: the first few pass, the rest are counted, and one summary
line with the count and a few examples is logged when the block ends.

Why: a run where 5,000 invoices vanish between their list and detail calls would otherwise write
5,000 near-identical lines, burying everything else in the Dagster run log. It is a plain
`logging.Filter`, so Dagster's captured logs, the CLI's stderr and any handler see the same result.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class FoldRepeats(logging.Filter):
    """Lets the first `show` records whose message template is `template` through, counts the rest."""

    def __init__(self, template: str, show: int = 3, examples: int = 5,
                 example: Callable[[logging.LogRecord], str] | None = None,
                 when: Callable[[logging.LogRecord], bool] | None = None):
        super().__init__()
        self.template = template
        self.when = when  # e.g. only this source's records, when several share the logger
        self.show = show
        self.max_examples = examples
        self.example = example or (lambda record: record.getMessage())
        self.count = 0
        self.examples: list[str] = []
        self._lock = threading.Lock()  # records come from worker threads

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.template or (self.when is not None and not self.when(record)):
            return True
        with self._lock:
            self.count += 1
            if self.count <= self.show:
                return True
            if len(self.examples) < self.max_examples:
                self.examples.append(self.example(record))
            return False

    @property
    def folded(self) -> int:
        return max(self.count - self.show, 0)


@contextmanager
def fold_repeats(logger: logging.Logger, template: str, summary: str, *, show: int = 3, examples: int = 5,
                 example: Callable[[logging.LogRecord], str] | None = None,
                 when: Callable[[logging.LogRecord], bool] | None = None) -> Iterator[FoldRepeats]:
    """Within the block, records of `logger` with message template `template` past the first `show`
    are held back; at the end one warning `summary` (formatted with count=, folded=, examples=) says
    how many there were in all."""
    fold = FoldRepeats(template, show, examples, example, when)
    logger.addFilter(fold)
    try:
        yield fold
    finally:
        logger.removeFilter(fold)
        if fold.folded:
            logger.warning(summary.format(count=fold.count, folded=fold.folded,
                                          examples=", ".join(fold.examples) + (", ..." if fold.folded > len(fold.examples) else "")))
