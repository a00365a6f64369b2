"""What a caller may do: the six scopes of CONTRACT.md and a caller's grant (its name, scopes and judges).

This module owns the vocabulary and the decisions ("may this caller use this tool, see this judge?"). It imports
nothing from MCP and reads no file, so settings can name scopes and the engine stays unaware of callers; where a
grant comes from (a bearer token, or local trust over stdio) is the business of `auth.py` and `app.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

Scope = Literal["score", "read", "teach", "evaluate", "forget", "admin"]
ALL_SCOPES: tuple[Scope, ...] = get_args(Scope)


class ScopeDeniedError(Exception):
    """A caller asked for a tool outside its scopes."""

    def __init__(self, tool: str, needed: Scope, grant: Grant) -> None:
        self.needed = needed
        held = ", ".join(sorted(grant.scopes)) or "none"
        whose = f"token {grant.who!r}" if grant.who else "this connection"
        super().__init__(
            f"{tool} needs scope {needed!r}, which {whose} does not hold (it holds: {held}). "
            f"Ask the server's operator for a token with scope {needed!r}; call tools/list to see what you may use."
        )


@dataclass(frozen=True)
class Grant:
    """What one caller may do: `who` is recorded in history; `judges` None means every judge."""

    who: str | None
    scopes: frozenset[Scope]
    judges: frozenset[str] | None = None

    @classmethod
    def local(cls, scopes: Iterable[Scope] = ALL_SCOPES) -> Grant:
        """A caller without a token (stdio, or HTTP served without tokens): these scopes, every judge."""
        return cls(who=None, scopes=frozenset(scopes))

    def may_use(self, scope: Scope) -> bool:
        """Whether a tool of this scope is this caller's to list and call."""
        return scope in self.scopes

    def may_see(self, judge: str) -> bool:
        """Whether this caller may know that the judge exists at all."""
        return self.judges is None or judge in self.judges

    def visible(self, names: Iterable[str]) -> list[str]:
        """The names among these that this caller may see, in their order."""
        return [n for n in names if self.may_see(n)]
