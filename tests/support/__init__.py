"""What the tests share, one copy of each (import from here, never from another test folder).

- fixtures.py   the pytest plugin of the suite (loaded by tests/conftest.py): databases,
                connections and Apps, built on pgdurable.testing
- sql.py        calling the PL/pgSQL functions directly, the session clock, SQLSTATE checks
- interleave.py races between connections written as explicit interleavings (and its fixtures)
- runs.py       in-process helpers for App tests: gates, call counters, crashes, run states
- processes.py  `pgdurable` CLI / worker processes and the sessions they leave in the database
- waiting.py    wait_until
- apps/         the Apps and scripts the processes run (`apps.<module>`, cwd tests/support)
"""
