"""``python -m oneprov`` is the ``oneprov`` command."""
import sys


def run() -> None:
    """The ``oneprov`` command. Ctrl-C while it starts (its imports take a second) exits with
    status 130 and no traceback, as Ctrl-C does once it runs."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
