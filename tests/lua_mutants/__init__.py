"""Hand-made mutants of code mutmut cannot mutate (the Lua scripts in Python strings), and
their runner: ``python -m tests.lua_mutants.run`` (``nox -s mutate_lua``). Not collected as
tests (pytest collects ``test_*.py`` only)."""
