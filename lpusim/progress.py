"""Progress on stderr for anything that takes more than a moment: one bar per stage, shown only
once the stage has run for a second (tqdm's `delay`), so quick commands print nothing extra."""

from __future__ import annotations

import sys

from tqdm import tqdm


class StageProgress:
    """A `progress(stage, fraction)` callback: compile stages, validation steps."""

    def __init__(self, enabled: bool = True, delay_s: float = 1.0):
        self.enabled, self.delay_s = enabled, delay_s
        self.stage: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, stage: str, fraction: float) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(
                total=100, desc=stage, unit="%", file=sys.stderr, leave=False,
                delay=self.delay_s, disable=None,  # None: off unless stderr is a terminal
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}",
            )  # fmt: skip
        step = min(100, int(round(fraction * 100))) - self.bar.n
        if step > 0:
            self.bar.update(step)  # shown only once the stage has run for delay_s

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
