"""The errors this package raises.

One hierarchy rooted in `VitError`; each class also subclasses the built-in a caller would catch without
knowing this package (`ValueError` for bad arguments and inputs, `OSError` for files), so both
`except vit.VitError` and `except ValueError` work.
"""


class VitError(Exception):
    """Root of every error raised on purpose by `vit`."""


class ConfigError(VitError, ValueError):
    """An unknown model name, an unknown option, or an option value that cannot work."""


class InputError(VitError, ValueError):
    """A tensor given to the model has the wrong shape, channel count or dtype."""


class CheckpointError(VitError, ValueError):
    """A checkpoint that is not one, is of another architecture, or has missing/unexpected/misshapen keys."""


class DataError(VitError, ValueError):
    """A dataset that cannot be used: corrupt or unreadable images, empty class folders, mismatched classes."""


class NonFiniteLossError(VitError, FloatingPointError):
    """The training loss became NaN or infinite; the run stops without overwriting last.ckpt."""


class RankLostError(VitError, RuntimeError):
    """A collective failed in a job of several ranks: another rank is gone (killed, a lost node). torchrun
    --max-restarts restarts the job, which continues from last.ckpt."""


class OutputError(VitError, OSError):
    """An output folder or file that cannot be written (unwritable, disk full, locked by another run)."""


def check_known_options(given, dataclass_type, what: str) -> None:
    """Raise ConfigError naming any key of `given` that is not a field of `dataclass_type`, with the closest
    valid ones (difflib's, as for model names); all of them where none is close."""
    import difflib
    from dataclasses import fields

    known = sorted(f.name for f in fields(dataclass_type))
    unknown = sorted(set(given) - set(known), key=str)
    if unknown:
        close = {k: difflib.get_close_matches(str(k), known, n=3, cutoff=0.6) for k in unknown}
        hint = ", ".join(f"{c!r} (for {k!r})" for k, cs in close.items() for c in cs)
        valid = f"the closest: {hint}" if hint else str(known)
        raise ConfigError(f"unknown {what} option(s) {unknown}; valid options: {valid}")
