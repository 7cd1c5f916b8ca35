"""What the tests share, one copy of each (import from here, never from another test folder).

- fixtures.py   the pytest plugin of the suite (loaded by tests/conftest.py): databases,
                connections and Apps, built on pgdurable.testing
"""
