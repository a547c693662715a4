"""Entry point of the generate stage, ``python -m data_prep.generate``; the stage is data_prep/candidates/generate.py."""

from data_prep.candidates.generate import main

if __name__ == "__main__":
    main()
