"""Candidate utterances: TTS voices (tts/) and perturbed real speech (perturb), planned and
generated in shards by the generate stage (``python -m data_prep.generate``)."""
