"""The recipes behind ``halluremedy SUBCOMMAND`` and ``scripts/*.py``: each module holds one
recipe's typed config (composed of the shared :mod:`.sections`) and the function that runs it."""
