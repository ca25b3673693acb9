"""One error hierarchy for Loopline."""


class LooplineError(Exception):
    """Root of every error Loopline raises on purpose."""


class SpecError(LooplineError):
    """The pipeline spec is invalid; the message names the YAML path and the reason."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = errors or []  # one 'path (line N): reason' per problem, when the spec was parsed


class ValidationFailed(LooplineError):
    """An input record does not satisfy its schema (goes to a 4xx or the dead-letter topic)."""

    def __init__(self, errors: list[dict]):
        self.errors = errors
        first = errors[0] if errors else {"field": "", "reason": "invalid"}
        super().__init__(f"{first['field'] or '<record>'}: {first['reason']}")

    @property
    def reason_code(self) -> str:
        """A bounded code for metrics and dead-letter headers."""
        return self.errors[0].get("code", "invalid") if self.errors else "invalid"


class KafkaUnavailable(LooplineError):
    """The broker did not acknowledge in time; the caller should retry later."""


class ArtifactRejected(LooplineError):
    """A model artifact failed its integrity check (digest or signature): it is never deserialized."""


class ScoringError(LooplineError, ValueError):
    """A model version cannot be served with this spec (from shared.scoring.compile_scorer), or cannot
    score one request: an input it needs is missing, its encoder refuses an unknown category, or the
    score is not a finite number (from score_one / score_many: the request's fault, a 4xx)."""
