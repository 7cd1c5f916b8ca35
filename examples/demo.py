"""The durable-workflow demo behind `make demo`.

A 3-step checkout workflow is started in a child process, which is killed with SIGKILL in the
middle of step 2. A second process starts the same workflow id again: once the dead process's
lease has expired it takes the run over and finishes it from the checkpoint; step 1 is not re-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from orders import Order, app, checkout

HERE = Path(__file__).resolve().parent


def child(workflow_id: str, order_json: str) -> None:
    """Runs in a child process: start (or take over) the workflow and wait for its result."""
    order = Order.model_validate_json(order_json)
    with app:
        receipt = app.start(checkout, order, workflow_id=workflow_id).result(timeout=60)
    print(f"  [pid {os.getpid()}] result: {receipt.model_dump_json()}", flush=True)


def spawn(workflow_id: str, order: Order, charge_seconds: float) -> subprocess.Popen[str]:
    env = {**os.environ, "DEMO_CHARGE_SECONDS": str(charge_seconds), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(HERE / "demo.py"), "--child", workflow_id, order.model_dump_json()],
        stdout=subprocess.PIPE, text=True, env=env,
    )


def main() -> int:
    order = Order(order_id=f"{int(time.time() * 1000)}", item="widget", quantity=2,
                  amount=Decimal("42.00"))
    workflow_id = f"order-{order.order_id}"
    lines: list[str] = []

    print(f"pgdurable demo: a 3-step checkout workflow, id {workflow_id}")
    first = spawn(workflow_id, order, charge_seconds=30.0)
    print(f"> process {first.pid} starts the workflow")
    assert first.stdout is not None
    for line in first.stdout:
        print(line, end="")
        lines.append(line)
        if "step 2 charge_card: charging" in line:
            time.sleep(0.3)  # well inside step 2
            os.kill(first.pid, signal.SIGKILL)
            break
    first.wait()
    print(f"x killed process {first.pid} with SIGKILL in the middle of step 2")

    with app:
        info = app.get_workflow(workflow_id)
        recorded = ", ".join(f"step {s.step_no + 1} {s.name.split('.')[-1]} ({s.status})"
                             for s in app.list_steps(workflow_id))
        print(f"  database: status {info.status}, epoch {info.attempt}, recorded: {recorded}")
        assert info.lease_until is not None
        wait = (info.lease_until - datetime.now(UTC)).total_seconds() + 0.2
    print(f". the dead process still holds the lease; waiting {max(wait, 0):.1f} s for it to "
          "expire")
    time.sleep(max(wait, 0))

    second = spawn(workflow_id, order, charge_seconds=0.5)
    print(f"> process {second.pid} starts the same workflow id again")
    assert second.stdout is not None
    for line in second.stdout:
        print(line, end="")
        lines.append(line)
    if second.wait() != 0:
        print("demo failed: the second process exited with an error")
        return 1

    with app:
        info = app.get_workflow(workflow_id)
    step1_runs = sum("step 1 reserve_inventory" in line for line in lines)
    step2_runs = sum("step 2 charge_card: charging" in line for line in lines)
    print(f"= workflow {info.status} at epoch {info.attempt}; step 1 ran {step1_runs} time "
          f"(replayed from its checkpoint, not re-run); step 2 started {step2_runs} times "
          "(it had not finished when the first process died)")
    ok = info.status == "succeeded" and step1_runs == 1 and info.attempt == 2
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
