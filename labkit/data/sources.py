"""The lab's data sources as Ibis tables on one engine per command.

Files (CSV, Parquet) are queried in place by an embedded DuckDB that is sandboxed: it may read only the
lab root (and ``data_root``), write only under ``results/``, and its configuration is locked, so no
table expression built from a pilot file can reach ``/etc/passwd`` or the network. Every metric is an
Ibis expression over these tables, so the same definition compiles to PostgreSQL or Spark (the cohort
issue adds those backends here).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.errors import DataError, LabkitError
from labkit.lab import Lab

if TYPE_CHECKING:  # pragma: no cover
    import ibis


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Engine:
    """One connection to where the lab's data lives, with each source opened at most once."""

    lab: Lab
    con: object = field(default=None, repr=False)
    _tables: dict = field(default_factory=dict, repr=False)

    @classmethod
    def for_lab(cls, lab: Lab) -> Engine:
        import ibis

        con = ibis.duckdb.connect()
        readable = [lab.root]
        if lab.spec.data_root:
            readable.append(Path(lab.spec.data_root).resolve())
        dirs = ", ".join(_quote(str(d)) for d in readable)
        # A progress bar on long queries would be printed to stdout and corrupt --json output. Inside
        # Jupyter DuckDB refuses to change the setting without ipywidgets (and prints no bar there).
        try:
            con.raw_sql("SET enable_progress_bar=false")
        except Exception:  # noqa: BLE001 — duckdb.InvalidInputException, imported lazily
            pass
        # Order matters (all at once fails): allow the folders, cut external access, then lock.
        con.raw_sql(f"SET allowed_directories=[{dirs}]")
        con.raw_sql("SET enable_external_access=false")
        con.raw_sql("SET lock_configuration=true")
        return cls(lab=lab, con=con)

    def table(self, name: str) -> ibis.Table:
        """The Ibis table of a lab source, opened on first use."""
        if name in self._tables:
            return self._tables[name]
        spec = self.lab.source(name)
        if spec.format in ("csv", "parquet"):
            path = self.lab.source_path(name)
            if not path.exists():
                raise DataError(name, f"file {self.lab.display(path)} does not exist (run `labkit demo` for the demo lab)")
            try:
                if spec.format == "csv":
                    table = self.con.read_csv(str(path), table_name=f"src_{name}")
                else:
                    table = self.con.read_parquet(str(path), table_name=f"src_{name}")
            except Exception as exc:  # DuckDB's own errors: permission, parse
                raise DataError(name, f"cannot read {self.lab.display(path)}: {_first_line(exc)}") from None
        else:
            raise LabkitError(f"source '{name}': format '{spec.format}' is not supported by this engine yet")
        self._tables[name] = table
        return table

    def read_file(self, path: Path, name: str) -> ibis.Table:
        """A parquet file labkit wrote itself (e.g. an assignment) as a table."""
        key = f"file:{path}"
        if key not in self._tables:
            self._tables[key] = self.con.read_parquet(str(path), table_name=name)
        return self._tables[key]

    def columns(self, name: str) -> dict[str, str]:
        """Column name -> type name of a source."""
        schema = self.table(name).schema()
        return {col: str(dtype) for col, dtype in schema.items()}

    def require_columns(self, name: str, columns: list[str]) -> None:
        """A clear error naming the missing column and listing the ones that exist."""
        have = self.columns(name)
        for col in columns:
            if col not in have:
                raise DataError(name, f"no such column; columns: {', '.join(have)}", column=col)

    def digest(self, name: str) -> str:
        """sha256 of a file source's bytes (the whole file, not a sample)."""
        spec = self.lab.source(name)
        if spec.format in ("csv", "parquet"):
            return file_digest(self.lab.source_path(name))
        raise LabkitError(f"source '{name}': no digest for format '{spec.format}' yet")

    def close(self) -> None:
        try:
            self.con.disconnect()
        except Exception:  # closing is best effort
            pass


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
