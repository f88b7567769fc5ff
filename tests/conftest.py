"""Suite-wide rules: a green run means everything ran, and no test depends on another's order.

* **Skips.** A test may skip when the machine cannot run it (not root, a tool missing, another
  lab holding the lab's address). Locally that is allowed, and the run ends with one line
  counting the skips by reason. Under `CI=true` every tier must run, so a skip is reported as
  a failure that says why it would have skipped (e.g. which lab holds 172.18.0.1).
* **Order.** Tests that need no kernel (not marked `lab`) run in a shuffled order: the modules
  are shuffled, and the tests inside each module, so module-scoped fixtures are still set up
  once. The seed is printed in the header; `PROXYCTL_TEST_SEED=N` repeats an order, and
  `PROXYCTL_TEST_SEED=0` keeps the file order. Kernel tests (`lab`) keep their order and run
  after the others: they build real namespaces and labs, and the order is the cheapest one.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any, Generator

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
SEED_VARIABLE = "PROXYCTL_TEST_SEED"

_skips: Counter[str] = Counter()


def _seed(config: pytest.Config) -> int:
    seed = getattr(config, "_proxyctl_seed", None)
    if seed is None:
        given = os.environ.get(SEED_VARIABLE, "")
        try:
            seed = int(given) if given else random.SystemRandom().randrange(1, 1 << 31)
        except ValueError:
            raise pytest.UsageError(f"{SEED_VARIABLE} must be an integer, not {given!r}") from None
        config._proxyctl_seed = seed  # type: ignore[attr-defined]
    return int(seed)


def pytest_report_header(config: pytest.Config) -> list[str]:
    seed = _seed(config)
    order = "file order" if seed == 0 else f"shuffled, {SEED_VARIABLE}={seed} repeats it"
    return [f"proxyctl: tests without the kernel run in {order}; skips are "
            + ("failures (CI=true)" if IN_CI else "allowed (CI is not true)")]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seed = _seed(config)
    kernel = [item for item in items if item.get_closest_marker("lab")]
    plain = [item for item in items if not item.get_closest_marker("lab")]
    if seed:
        rng = random.Random(seed)
        by_module: dict[str, list[pytest.Item]] = {}
        for item in plain:
            by_module.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
        modules = list(by_module.values())
        rng.shuffle(modules)
        plain = []
        for module_items in modules:
            rng.shuffle(module_items)
            plain += module_items
    items[:] = plain + kernel


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if IN_CI:
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI=true, where every tier must run: {reason}\n"
                           "(fix the machine, or run without CI=true to allow skips)")
    else:
        _skips[reason] += 1


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text.removeprefix("Skipped: ").strip() or "no reason given"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _skips:
        return
    total = sum(_skips.values())
    parts = "; ".join(f"{count} × {reason}" for reason, count in _skips.most_common())
    terminalreporter.write_line(f"proxyctl: {total} tests skipped (allowed without CI=true): {parts}")
