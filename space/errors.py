"""Errors a user can cause, each with the HTTP status it maps to and a message that says what to do."""

from __future__ import annotations


class UserError(Exception):
    """A request the server cannot serve because of what the client sent (always a 4xx)."""

    status_code = 400

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = message  # the mistake itself, without naming the image
        self.index = index  # which image of a request of several, when the mistake is in one of them

    def at(self, index: int) -> UserError:
        """The same mistake, naming the image of a request of several that caused it."""
        named = type(self)(f"Image {index} (counting from 0): {self.message}", index)
        named.reason = self.reason
        return named


class BadImage(UserError):
    """Not an image, or a corrupt or truncated one."""

    status_code = 400


class TooLarge(UserError):
    """Over the byte or pixel limit."""

    status_code = 413


class NotFound(UserError):
    """A model name or version this server does not serve (the v2 protocol names models in its paths)."""

    status_code = 404


class UnsupportedMediaType(UserError):
    """A content type the endpoint does not read."""

    status_code = 415


class BadParameter(UserError):
    """A parameter outside its allowed range or of the wrong type."""

    status_code = 422


class BodyTimeout(UserError):
    """The upload did not arrive within the body time limit (a stalled or very slow client)."""

    status_code = 408


class NotReady(Exception):
    """The model is still loading; the client should retry shortly (503)."""


class ModelUnavailable(Exception):
    """The model cannot be loaded; the message says how to fix it. Raised at start-up only."""
