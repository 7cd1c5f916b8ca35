"""An agent-style run: plan, fan out tool calls to a queue, gather them, summarise.

The agent workflow starts one `tool_call` child per planned task (`tools.enqueue_many` inside a
workflow: one checkpointed step, child ids `<agent id>:1:<n>`), so a replay after a crash finds
the same children instead of creating new ones. Workers on the `tools` queue run the calls in
parallel (at most 4 at a time, at most 10 starts per second); `pgdurable.gather` suspends the
agent until the last of them ends, then it summarises.

Kill the worker in the middle of the fan-out (`kill -9`), start another, and the run finishes
with exactly five tool calls: the children already started are not started again, those that
finished are not run again, and the agent is woken by whichever child ends last.

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
def summarise(results: list[ToolResult]) -> str:
    return "; ".join(r.answer for r in results)


@app.workflow()
def agent(goal: str) -> str:
    tasks = plan(goal)
    # Inside a workflow, enqueue_many starts child runs as one checkpointed step: their ids are
    # derived from the agent's id and the step number, so a replay finds the same children.
    calls = tools.enqueue_many(tool_call, [(task,) for task in tasks])
    # The agent is suspended until the last child ends (it holds no worker slot meanwhile);
    # that child's own final commit wakes it, and the results come back typed, in order.
    return summarise(pgdurable.gather(calls))


if __name__ == "__main__":
    goal = " ".join(sys.argv[1:]) or "compare three databases"
    with app:
        handle = agents.enqueue(agent, goal)
        print(f"agent run {handle.workflow_id} queued; waiting for a worker...")
        print(handle.result(timeout=600))
