"""One error family for labkit; ``str(error)`` is the one-line message the CLI prints.

    LabkitError                      anything labkit reports to a user instead of a traceback
    ├── SpecError(file, line, field, message)     one problem in a pilot or lab file, or in what was typed:
    │                                              a command-line option (file='--output'), a pilot id, the lab
    │                                              looked for (``labkit._validation.unlocated``: no file:line)
    ├── SpecErrors(errors)                         every problem of one pass, sorted by file and line
    ├── DataError(source, column, message, rows)   a data source that cannot be used as written
    ├── AssignmentError(pilot, message)            drawing or reading a cohort's assignment failed
    ├── RunError(pilot, message, cell, ename)      a notebook run that did not complete
    └── TrackingError(message)                     the MLflow store could not record or be read

The CLI maps any LabkitError to its message and exit 1 (``--debug`` shows the traceback). Raise the class
where the problem belongs, never the bare base, and never re-wrap one so that its type is lost
(tests/test_errors.py checks that each class is raised somewhere and printed as one line).
"""

from __future__ import annotations


class LabkitError(Exception):
    """Base of every error labkit reports as a message rather than a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SpecError(LabkitError):
    """One problem in a YAML file: ``file:line: field.path: message``."""

    def __init__(self, file: str, line: int | None, field: str, message: str, column: int | None = None):
        self.file = str(file)
        self.line = line
        self.column = column
        self.field = field
        where = self.file
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        text = f"{where}: {field}: {message}" if field else f"{where}: {message}"
        super().__init__(text)
        self.detail = message

    def sort_key(self) -> tuple:
        return (self.file, self.line or 0, self.column or 0, self.field, self.detail)


class SpecErrors(LabkitError):
    """Every problem found in one pass over one or more files, one line each, sorted."""

    def __init__(self, errors: list[SpecError]):
        unique = {e.message: e for e in errors}
        self.errors = sorted(unique.values(), key=SpecError.sort_key)
        super().__init__("\n".join(e.message for e in self.errors))


class DataError(LabkitError):
    """A source, column or value the analysis cannot use; names the source and column, never a customer."""

    def __init__(self, source: str | None, message: str, column: str | None = None, rows: int | None = None):
        self.source = source
        self.column = column
        self.rows = rows
        if source is None:  # a value or an engine at fault, not one source: the message says it all
            super().__init__(message)
            return
        where = f"source '{source}'" + (f", column '{column}'" if column else "")
        super().__init__(f"{where}: {message}")


class AssignmentError(LabkitError):
    """Drawing, reading or re-drawing a pilot's assignment failed."""

    def __init__(self, pilot: str, message: str):
        self.pilot = pilot
        super().__init__(f"{pilot}: {message}")


class RunError(LabkitError):
    """A notebook run that did not complete; names the failing cell and the error where known."""

    def __init__(self, pilot: str | None, message: str, cell: int | None = None, ename: str | None = None):
        self.pilot = pilot
        self.cell = cell
        self.ename = ename
        super().__init__(message if pilot is None else f"{pilot}: {message}")  # None: no one pilot


class TrackingError(LabkitError):
    """The MLflow store could not be reached, written or read."""
