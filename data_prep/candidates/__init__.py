"""Candidate utterances: TTS voices (tts/) and perturbed real speech (perturb/), planned (plan) and
made in shards (shards) by the generate stage (generate, run as ``python -m data_prep.generate``)."""
