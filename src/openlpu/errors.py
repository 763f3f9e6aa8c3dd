"""The error hierarchy.

User errors say what went wrong, where (file and field, instruction, cycle) and how to fix it. Internal errors
are bugs in OpenLPU itself.
"""

from __future__ import annotations


class OpenLPUError(Exception):
    """Base of every error OpenLPU raises on purpose."""


class UserError(OpenLPUError):
    """Something the user gave us is wrong; the message says what, where and how to fix it."""


class ConfigError(UserError):
    """A hardware description (TOML) is malformed, incomplete or impossible."""


class AssemblyError(UserError):
    """Assembly text that cannot be parsed; carries the line and column."""

    def __init__(self, message: str, *, source: str, line: int, column: int) -> None:
        self.source, self.line, self.column = source, line, column
        super().__init__(f"{source}:{line}:{column}: {message}")


class ProgramError(UserError):
    """A program that is well-formed text but illegal for the chip (bad queue, operand out of range)."""


class ScheduleError(UserError):
    """A program whose timing is illegal: a stream, bank or unit conflict, or a dependency not met in time.

    The simulator raises it for the earliest violation in the program, naming the cycle, queue and instruction,
    with context; `cycle` holds that cycle (None where there is none, e.g. a deadlock).
    """

    def __init__(self, message: str, *, cycle: int | None = None) -> None:
        self.cycle = cycle
        super().__init__(message)


class DoesNotFitError(UserError):
    """A model or tensor that does not fit in the SRAM of the chips asked for."""


class InternalError(OpenLPUError):
    """A bug in OpenLPU: please report it."""
