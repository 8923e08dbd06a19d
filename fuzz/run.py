"""Run a fuzz target under atheris (coverage-guided, libFuzzer's engine).

Usage::

    python fuzz/run.py TARGET [CORPUS_DIR] [libFuzzer options]

TARGET is one of ``h1_server``, ``h1_client``, ``config`` (see fuzz/targets.py). The
corpus directory, if given, is seeded with the target's seeds and grows as the fuzzer
finds new coverage. A finding (an exception, a disagreement between the codecs) stops
the run with the input written to ``crash-*``; a hang is one with ``-timeout=N``.

The long run (30 minutes a target)::

    nice python fuzz/run.py h1_server /tmp/corpus-h1_server -max_total_time=1800 -timeout=10

CI runs each target for a few seconds (tests/test_fuzz.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

# What each target's coverage is measured over: instrumenting only these keeps start-up short.
INSTRUMENTED = {
    "h1_server": ["meshcore.http.h1", "meshcore.http.h1fast", "meshcore.http.h1strict", "h11"],
    "h1_client": ["meshcore.http.h1", "meshcore.http.h1fast", "meshcore.http.h1strict", "h11"],
    "config": ["meshcore.config", "yaml"],
}


def main() -> None:
    """Seed the corpus, then hand over to libFuzzer."""
    if len(sys.argv) < 2 or sys.argv[1] not in INSTRUMENTED:  # noqa: PLR2004 - the program and the target
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(INSTRUMENTED)}}} [CORPUS_DIR] [libFuzzer options]")
    name = sys.argv.pop(1)
    with atheris.instrument_imports(include=INSTRUMENTED[name]):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from targets import SEEDS, TARGETS  # noqa: PLC0415 - imported under instrumentation
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(SEEDS[name]):
            (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
