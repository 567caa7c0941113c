"""``python -m oneprov`` is the ``oneprov`` command."""
from .cli import main

if __name__ == "__main__":
    main()
