"""The model side of the recipe: train, evaluate, ablate and report on the datasets data_prep wrote to disk."""
