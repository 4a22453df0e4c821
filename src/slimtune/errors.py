"""The slimtune error hierarchy: every failure a user can cause has a type and a message that names the fix."""

from __future__ import annotations


class SlimtuneError(Exception):
    """Base class of every error slimtune raises on purpose."""


class ConfigError(SlimtuneError, ValueError):
    """A configuration value is invalid; the message quotes the value and names the field."""


class TargetError(ConfigError):
    """A target pattern matched no module, or matched a module the method cannot adapt."""


class AdapterNameError(SlimtuneError, KeyError):
    """An adapter name is unknown, or already taken."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AdapterStateError(SlimtuneError):
    """An operation does not fit the adapter's current state (e.g. training while merged)."""


class MergeError(AdapterStateError):
    """A merge would produce non-finite weights, or cannot be undone."""


class LoadError(SlimtuneError):
    """An adapter or checkpoint could not be loaded; nothing was changed."""


class KeyMismatchError(LoadError):
    """Missing or unexpected keys, or shapes that do not fit the model."""


class UnsafeFormatError(LoadError):
    """A pickle-based file (.bin, .pt, .pth, .ckpt) was offered; it is refused, never unpickled."""


class CorruptFileError(LoadError):
    """A file is truncated, corrupt or not what its name says."""


class FingerprintMismatchError(LoadError):
    """The base model differs from the one the adapter was trained on."""


class UnknownMethodError(LoadError, ConfigError):
    """A config names a PEFT method (peft_type) that slimtune does not know."""


class DataError(SlimtuneError):
    """A dataset file or row is unusable; the message names file and line."""


class TrainingError(SlimtuneError):
    """Training cannot go on (e.g. repeated non-finite losses)."""


class CheckpointError(SlimtuneError):
    """A checkpoint is incomplete or does not fit the run."""


class PolicyError(SlimtuneError):
    """A governance or promotion policy refused the action; override only with a recorded reason."""


class RegistryError(SlimtuneError):
    """An adapter registry operation failed."""


class RegistryLockedError(RegistryError):
    """The registry database is locked by another process; retry."""


class IntegrityError(RegistryError, LoadError):
    """A stored blob or manifest does not match its recorded hash or signature."""


class ServeError(SlimtuneError):
    """The server could not satisfy a request."""
