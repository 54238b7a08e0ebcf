"""``python -m everylabel``: the command-line interface (the ``everylabel`` console script)."""

from everylabel.cli import main

if __name__ == "__main__":
    main(prog_name="everylabel")
