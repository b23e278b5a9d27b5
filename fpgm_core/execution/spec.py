"""Executor specs as the CLI takes them: ``inline``, ``processes:N``, ``ray``, ``ray:ADDRESS``."""

from __future__ import annotations

import os
from typing import Mapping

from .base import INLINE, Executor, ExecutorError

__all__ = ["EXECUTOR_SPECS", "parse_executor"]

EXECUTOR_SPECS = "inline | processes:N | ray | ray:ADDRESS"


def parse_executor(spec: str | None, *, environ: Mapping[str, str] = os.environ) -> Executor:
    """The executor a spec names; ExecutorError naming the choices for anything else.

    ``inline`` (or None): in this process. ``processes:N``: N local worker processes. ``ray``: the
    cluster at ``RAY_ADDRESS`` when set, else a Ray started on this machine. ``ray:ADDRESS``: the
    cluster at ADDRESS. Nothing is started or connected here (that happens on first use).
    """
    text = "inline" if spec is None else str(spec).strip()
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if kind == "inline" and not sep:
        return INLINE
    if kind == "processes":
        try:
            count = int(rest)
        except ValueError:
            raise ExecutorError(f"executor {text!r}: give the number of processes, e.g. processes:4") from None
        if count < 1:
            raise ExecutorError(f"executor {text!r}: give at least one process")
        from .processes import ProcessExecutor

        return ProcessExecutor(count)
    if kind == "ray":
        if sep and not rest.strip():
            raise ExecutorError(f"executor {text!r}: give the cluster's address after ray: (e.g. ray:10.0.0.5:6379)")
        from .ray_cluster import RayExecutor

        return RayExecutor(rest.strip() if sep else (environ.get("RAY_ADDRESS") or None))
    raise ExecutorError(f"unknown executor {text!r}: use {EXECUTOR_SPECS}")
