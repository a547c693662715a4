"""The one error the checkpoint package raises for a checkpoint it cannot read, convert or resolve."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resolved or converted; the message names the file and the fix."""
