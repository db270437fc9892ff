"""Every error the notifier raises on purpose, in one tree.

::

    NotifierError
    ├── ConfigError              bad config file or value (CLI exit code 2)
    ├── SchemaError              a schema that cannot be read or pulled
    ├── PollError                a poll that could not see the data; kind says why
    │   ├── AuthError                token missing, refused or lacking scope
    │   ├── RateLimitedError         HTTP 429 after every retry
    │   ├── ServerError              HTTP 5xx after every retry
    │   ├── NetworkError             connection refused, reset or timed out
    │   ├── GraphQLResponseError     the answer carried GraphQL ``errors``
    │   ├── MalformedResponseError   not JSON, or not the shape the watch expects
    │   └── IncompleteWalkError      pages that do not add up to one list
    ├── StoreError               the SQLite file could not be used
    │   └── GenerationConflict       another poll committed the same watch first
    └── DeliveryError            a send that failed; retryable unless ``permanent``

Messages name the bad value and say what to do. No message ever carries a
token, a webhook secret or a raw Apprise URL.
"""

from __future__ import annotations

from collections.abc import Sequence


class NotifierError(Exception):
    """Base of every error the notifier raises on purpose."""


class ConfigError(NotifierError):
    """A config file or value that cannot be used.

    ``problems`` holds one readable line per problem, each naming the file,
    the dotted key and, where known, the line.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        if count == 1:
            # One problem reads as one line on stderr and in a log.
            super().__init__(f"invalid configuration: {self.problems[0]}")
            return
        super().__init__(f"{count} config problems:\n  " + "\n  ".join(self.problems))


class SchemaError(NotifierError):
    """A GraphQL schema that cannot be read, built or pulled."""


class PollError(NotifierError):
    """A poll that could not see the data.

    ``kind`` is a short stable name used in logs, metrics and the store;
    ``hint`` says in plain words what a person can do about it.
    """

    kind = "error"
    hint = "the poll failed: see the last error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthError(PollError):
    """The API refused the token, or the watch needs one and has none."""

    kind = "auth"
    hint = "the token was refused: reconnect the app or set a new token"


class RateLimitedError(PollError):
    """The API kept answering 429 after every retry."""

    kind = "rate_limited"
    hint = "the API is rate limiting us: lower the poll rate or the rate limit"


class ServerError(PollError):
    """The API kept answering 5xx after every retry."""

    kind = "server"
    hint = (
        "the Atleta API is failing on its side: nothing to change here, "
        "polls go on and catch up when it recovers"
    )


class NetworkError(PollError):
    """The API could not be reached: refused, reset or timed out."""

    kind = "network"
    hint = "the Atleta API cannot be reached: check the network"


class GraphQLResponseError(PollError):
    """The answer carried GraphQL ``errors``, with or without partial data."""

    kind = "graphql"
    hint = "the API rejected the query: run `atleta-notifier check --online`"


class MalformedResponseError(PollError):
    """The answer was not JSON, or had no record list where the watch expects one."""

    kind = "malformed"
    hint = (
        "the API answered something that is not the expected data: check the "
        "watch's ids and run `atleta-notifier check --online`"
    )


class IncompleteWalkError(PollError):
    """The pages of a walk do not add up to one consistent list."""

    kind = "incomplete"
    hint = "the record list kept changing while it was read: the next poll retries"


class StoreError(NotifierError):
    """The SQLite file could not be opened, migrated or written."""


class GenerationConflict(StoreError):
    """Another poll committed the same watch since this one read its snapshot."""

    def __init__(self, watch: str, expected: int, found: int) -> None:
        super().__init__(
            f"watch {watch!r} moved from snapshot generation {expected} to {found} "
            "while this poll ran; its changes were already recorded"
        )
        self.watch = watch
        self.expected = expected
        self.found = found


class DeliveryError(NotifierError):
    """A send that failed.

    ``permanent`` marks failures that retrying cannot fix (HTTP 410, a
    rejected URL); ``retry_after`` carries a server's ``Retry-After``.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
