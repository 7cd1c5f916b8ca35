"""An agent-style run: plan, fan out tool calls to a queue, gather them, summarise.

The agent workflow enqueues one `tool_call` run per planned task with a deterministic id
(`<agent id>:tool:<n>`), so a replay after a crash finds the same children instead of creating
new ones. Workers on the `tools` queue run the calls in parallel (at most 4 at a time, at most
10 starts per second); the agent waits for all of them, then summarises.

Run it (from the repository root, after `pgdurable migrate`), in two terminals:

    python -m examples.agent_fanout "compare three databases"   # enqueues, waits for the result
    pgdurable worker examples.agent_fanout:app                   # runs the agent and its tools
"""

from __future__ import annotations

import sys
import time

from pydantic import BaseModel

import pgdurable

app = pgdurable.App()
tools = app.queue("tools", concurrency=4, rate_limit=pgdurable.RateLimit(10, per_seconds=1))
agents = app.queue("agents")


class ToolResult(BaseModel):
    task: str
    answer: str


@app.step(retries=2, interval=0.5)
def plan(goal: str) -> list[str]:
    # Stands in for a model call that splits the goal into tasks.
    return [f"{goal}: aspect {n}" for n in range(1, 6)]


@app.workflow()
def tool_call(task: str) -> ToolResult:
    return ToolResult(task=task, answer=search(task))


@app.step(retries=3, interval=0.2)
def search(task: str) -> str:
    time.sleep(0.2)  # stands in for a slow tool or API
    return f"findings for {task!r}"


@app.step()
def dispatch(agent_id: str, tasks: list[str]) -> list[str]:
    # Deterministic child ids make this step safe to run again: enqueue returns existing runs.
    return [tools.enqueue(tool_call, task, workflow_id=f"{agent_id}:tool:{n}").workflow_id
            for n, task in enumerate(tasks)]


@app.step()
def gather(child_ids: list[str]) -> list[ToolResult]:
    return [app.retrieve(child).result(timeout=300) for child in child_ids]


@app.step()
def summarise(results: list[ToolResult]) -> str:
    return "; ".join(r.answer for r in results)


@app.workflow()
def agent(goal: str) -> str:
    agent_id = pgdurable.workflow_id()
    assert agent_id is not None
    children = dispatch(agent_id, plan(goal))
    return summarise(gather(children))


if __name__ == "__main__":
    goal = " ".join(sys.argv[1:]) or "compare three databases"
    with app:
        handle = agents.enqueue(agent, goal)
        print(f"agent run {handle.workflow_id} queued; waiting for a worker...")
        print(handle.result(timeout=600))
