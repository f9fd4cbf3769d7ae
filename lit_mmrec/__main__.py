"""``python -m lit_mmrec`` is the same as the ``lit_mmrec`` command."""

from lit_mmrec.cli import main

if __name__ == "__main__":
    main()
