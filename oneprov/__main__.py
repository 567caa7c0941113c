"""``python -m oneprov`` is the ``oneprov`` command."""
from .cli import main

main()
