"""The fuzz targets (fuzz/targets.py) for a bounded time each, coverage-guided under atheris.

Any crash, hang (over 10 s on one input) or disagreement between the two HTTP/1.1 codecs
fails the run, and with it this test; the input is in the test's tmp_path. CI runs a fixed
number of inputs a target (a few seconds each on an idle machine: a count, not a time, so
that a loaded machine does the same work, only slower); the documented long run
(fuzz/run.py's docstring) runs 30 minutes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import trio

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
RUNS = {"h1_server": 600, "h1_client": 600, "config": 80}
"""Inputs per target: the config target is about ten times slower per input."""
LIMIT = 120
"""Seconds a target may take at most (libFuzzer's -max_total_time), far above the need."""
sys.path.insert(0, str(FUZZ))
from targets import SEEDS, TARGETS, DisagreementError, h1_server  # type: ignore[import-not-found]  # noqa: E402 - fuzz/ is put on sys.path above; it is no package mypy sees

from meshcore.errors import ProtocolError  # noqa: E402 - after the path of fuzz/
from meshcore.http.codec import NEED_DATA, ServerEvent  # noqa: E402
from meshcore.http.h1fast import FastServerCodec  # noqa: E402


async def test_a_bounded_fuzz_run_of_each_target_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the test extra, for Linux x86-64 (its wheels)")
    outputs: dict[str, tuple[int, str]] = {}

    async def run(target: str) -> None:
        folder = tmp_path / target
        folder.mkdir()
        argv = [sys.executable, str(FUZZ / "run.py"), target, str(folder / "corpus")]
        argv += [
            f"-runs={RUNS[target]}",
            f"-max_total_time={LIMIT}",
            "-timeout=10",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={folder}/",
        ]
        done = await trio.run_process(argv, cwd=folder, capture_stdout=True, capture_stderr=True, check=False)
        outputs[target] = (done.returncode, done.stderr.decode(errors="replace"))

    with trio.fail_after(LIMIT + 60):
        async with trio.open_nursery() as nursery:  # side by side: start-up is most of the time
            for target in TARGETS:
                nursery.start_soon(run, target)
    for target, (returncode, output) in outputs.items():
        assert returncode == 0, f"{target}: {output[-3000:]}"
        runs = re.search(r"Done (\d+) runs", output)
        assert runs is not None, f"{target}: {output[-3000:]}"
        assert int(runs[1]) == RUNS[target], target  # every input ran, within the time limit


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_seeds_pass(target: str) -> None:
    for seed in SEEDS[target]:
        TARGETS[target](seed)


class LenientServerCodec(FastServerCodec):
    """Takes what it should refuse: the fuzz target must tell."""

    def next_event(self) -> ServerEvent:
        try:
            return super().next_event()
        except ProtocolError:
            return NEED_DATA


def test_a_disagreement_is_a_finding() -> None:
    # A target must fail when the codecs disagree, or the fuzzing above could not find anything.
    folded = b"\x01\x00\x00\x00GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"
    h1_server(folded)  # both codecs refuse the obs-fold alike
    with pytest.raises(DisagreementError):
        h1_server(folded, fast_codec=LenientServerCodec)
