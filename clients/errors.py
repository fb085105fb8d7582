"""The client's errors, and which failures of a Triton server are worth another try.

Every error a client raises is a ClientError (a contract.errors.UserError: the command line prints
it as one line) that says what went wrong and where. Retried: the server is (re)starting, a Python
stub is being restarted, a model is being reloaded, the server is busy (a composing model's queue
is full, or a request waited past the queue timeout: Triton 2.51 answers both with HTTP 503 /
gRPC UNAVAILABLE); anything else (bad input, an unknown model) fails at once.
"""
from __future__ import annotations

import re

from contract.errors import UserError

# Triton 2.51's two refusals of a bounded queue (prefixed "in ensemble '<name>', " through an ensemble)
_BUSY_TEXT = re.compile(r"Exceeds maximum queue size|Request timeout expired", re.I)
_RETRY_STATUS = {"502", "503", "504", "StatusCode.UNAVAILABLE"}
_RETRY_TEXT = re.compile(r"unavailable|stub process|not healthy|unhealthy|is not ready|not at ready state|"
                         r"connection (reset|refused|closed)|socket closed|failed to connect", re.I)


class ClientError(UserError, RuntimeError):
    """Base class: every error this client raises says what went wrong and where."""


class ServerUnreachable(ClientError):
    """No answer from the server after every retry."""


class UnknownModel(ClientError):
    """The server answered but has no such model (the message lists the models it has)."""


class InferenceFailed(ClientError):
    """The server rejected or failed a request (the message carries Triton's own error)."""


class ServerBusy(InferenceFailed):
    """The server kept refusing the request as over its capacity, through every retry."""


def error_status(e: Exception) -> str:
    status = getattr(e, "status", None)
    return str(status() if callable(status) else status or "")


def error_message(e: Exception) -> str:
    msg = getattr(e, "message", None)
    text = msg() if callable(msg) else None
    return text or str(e) or type(e).__name__


def is_restricted(e: Exception) -> bool:
    # Triton answers a restricted API without the key with 403 (HTTP) or UNAVAILABLE (gRPC)
    return "is restricted" in error_message(e)


def is_busy(e: Exception) -> bool:
    """A refusal of a server past its capacity (the request never ran: safe to send again)."""
    return bool(_BUSY_TEXT.search(error_message(e)))


def is_connection_error(e: Exception) -> bool:
    # tritonclient.http raises the socket's own OSError; gRPC wraps it as UNAVAILABLE, as it does a refusal
    return isinstance(e, OSError) or (error_status(e) == "StatusCode.UNAVAILABLE"
                                      and not is_restricted(e) and not is_busy(e))


def is_retryable(e: Exception) -> bool:
    if is_restricted(e):
        return False
    return (is_connection_error(e) or error_status(e) in _RETRY_STATUS
            or error_status(e) == "StatusCode.DEADLINE_EXCEEDED" or bool(_RETRY_TEXT.search(error_message(e))))
