"""structlog, configured once per process: console on a TTY, JSON otherwise.

One event per state change, never one per row (DESIGN §8).
"""
from __future__ import annotations

import logging
import sys

import structlog

_configured = False


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog for this process (idempotent: the first call wins)."""
    global _configured
    if _configured:
        return
    _configured = True
    json_out = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False) if json_out
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper()) if isinstance(logging.getLevelName(level.upper()), int)
            else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
