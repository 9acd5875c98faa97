"""Employees and their lines: the plain functions behind the CLI and the portal."""

from sqlalchemy import select

from bot import phones
from bot.consent import Mode
from bot.extensions import db
from bot.models import Employee

DEFAULT = "default"


class EmployeeError(ValueError):
    """A bad number, mode or line, said in words a person can act on."""


def parse_mode(value: str | None) -> Mode | None:
    """``consent``/``disclaimer``/``off``, or None (``default``) to follow the organisation."""
    if value is None or value.strip().lower() == DEFAULT:
        return None
    try:
        return Mode(value.strip().lower())
    except ValueError:
        raise EmployeeError(
            f"mode must be consent, disclaimer, off or default, not {value!r}"
        ) from None


def _number(label: str, value: str, region: str) -> str:
    try:
        return phones.to_e164(value, region)
    except phones.InvalidNumber as exc:
        raise EmployeeError(f"{label}: {exc}") from None


def active_by_line(line: str) -> Employee | None:
    return db.session.execute(
        select(Employee).where(Employee.line == line, Employee.active.is_(True))
    ).scalar_one_or_none()


def get_active(line: str, region: str) -> Employee:
    employee = active_by_line(_number("line", line, region))
    if employee is None:
        raise EmployeeError(f"no active employee has the line {line}")
    return employee


def _validated(name: str, cell: str, line: str, region: str, keeping: int | None = None):
    """Name, cell and line checked and in E.164; the line must be free (but for ``keeping``)."""
    name = (name or "").strip()
    if not name:
        raise EmployeeError("name: an employee needs a name")
    cell = _number("cell", cell, region)
    line = _number("line", line, region)
    if cell == line:
        raise EmployeeError("cell and line must be different numbers")
    holder = active_by_line(line)
    if holder is not None and holder.id != keeping:
        raise EmployeeError(f"line {line} already belongs to an active employee")
    return name, cell, line


def add(name: str, cell: str, line: str, mode: str | None, region: str) -> Employee:
    """Give an employee a line (the caller commits)."""
    name, cell, line = _validated(name, cell, line, region)
    employee = Employee(name=name, cell=cell, line=line, mode=parse_mode(mode), active=True)
    db.session.add(employee)
    return employee


def listing() -> list[Employee]:
    return list(
        db.session.execute(
            select(Employee).order_by(Employee.active.desc(), Employee.name)
        ).scalars()
    )


def set_mode(line: str, mode: str, region: str) -> Employee:
    employee = get_active(line, region)
    employee.mode = parse_mode(mode)
    return employee


def remove(line: str, region: str) -> Employee:
    """Deactivate: the line then answers like an unknown one; its history stays."""
    employee = get_active(line, region)
    employee.active = False
    return employee


def update(employee: Employee, name: str, cell: str, line: str, mode: str | None, region: str):
    """Change an employee's name, numbers or mode (the caller commits)."""
    keeping = employee.id if employee.active else None
    employee.name, employee.cell, employee.line = _validated(name, cell, line, region, keeping)
    employee.mode = parse_mode(mode)
    return employee
