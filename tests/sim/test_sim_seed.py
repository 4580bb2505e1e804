"""Seeded random faults: the same seed gives the same outcomes, whatever the concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mta.clock import ManualClock

FAULTY = """
[[personas]]
name = "isp"
domains = ["isp.test"]
mx = [{ name = "mx.isp.test", address = "{net}.15" }]
[personas.faults]
soft = 0.3
hard = 0.2
"""

ADDRESSES = [f"user{i}@isp.test" for i in range(40)]


async def first_outcomes(
    stack_type: Any, net: str, root: Path, seed: int, together: bool
) -> dict[str, int]:
    stack = stack_type(net, root, ManualClock())
    try:
        await stack.start(FAULTY, seed=seed)
        if together:
            await stack.submit(ADDRESSES)  # one transaction, forty RCPTs
        else:
            for address in ADDRESSES:  # forty messages
                await stack.submit([address])
        await stack.quiet()
        return {a: r.history[0][0] for a, r in stack.rows().items()}
    finally:
        await stack.stop()


async def test_same_seed_same_outcomes(stack: Any, tmp_path: Path) -> None:
    seed = 5
    kind = type(stack)
    net = stack.net
    one = await first_outcomes(kind, net, tmp_path / "a", seed, together=True)
    two = await first_outcomes(kind, net, tmp_path / "b", seed, together=False)
    other = await first_outcomes(kind, net, tmp_path / "c", seed + 1, together=True)
    assert one == two
    assert one != other
    counts = {code: list(one.values()).count(code) for code in set(one.values())}
    assert set(counts) == {250, 451, 550}  # all three kinds occur with these rates
    assert 5 <= counts[550] <= 15 and 6 <= counts[451] <= 20


async def test_deterministic_mode_has_no_random_faults(stack: Any, tmp_path: Path) -> None:
    import dataclasses

    from mta.cli.sim import _flags

    class Args:  # what `mta sim --deterministic` sets
        deterministic = True
        seed = None

    assert _flags(Args()) == {"sim.random_faults": False}  # type: ignore[arg-type]
    config = stack.config(FAULTY, 5)
    config = dataclasses.replace(
        config, sim=dataclasses.replace(config.sim, random_faults=False)
    )
    await stack.start(config=config)
    await stack.submit(ADDRESSES)
    await stack.quiet()
    # The same persona and seed fail half of these addresses when faults are on (above).
    assert {r.history[0][0] for r in stack.rows().values()} == {250}
