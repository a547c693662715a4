"""The shared core that data_prep and recipe both build on, and that imports neither of them:
the utterance schema, the one config system, checkpoint resolution, seeding, atomic files, the
process pool and where a process stands under a launcher."""
