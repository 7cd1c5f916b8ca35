from __future__ import annotations

import pgdurable


def test_three_steps_run_and_replay(app: pgdurable.App) -> None:
    calls: list[str] = []

    @app.step()
    def fetch(x: int) -> int:
        calls.append("fetch")
        return x + 1

    @app.workflow()
    def flow(x: int) -> int:
        return fetch(x) * 2

    assert app.start(flow, 1, workflow_id="a").result(timeout=10) == 4
    assert app.start(flow, 1, workflow_id="a").result(timeout=10) == 4
    assert calls == ["fetch"]
