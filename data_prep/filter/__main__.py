"""Entry point of the filter stage, ``python -m data_prep.filter``; the stage is stage.py."""

from data_prep.filter.stage import main

main()
