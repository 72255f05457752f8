"""Exceptions carrying the gRPC canonical code and the daemon's message."""

CODE_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
              "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
              "UNAUTHENTICATED")


class EpdError(RuntimeError):
    """A failed epd call. `code` is the gRPC canonical code (int), `code_name` its name
    ("INVALID_ARGUMENT", ...), `message` the daemon's (or the client library's) message."""

    code = 2

    def __init__(self, code, message):
        self.code = code
        self.code_name = CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else "UNKNOWN"
        self.message = message
        super().__init__(f"{self.code_name}: {message}")


def _subclass(name, code):
    return type(name, (EpdError,), {"code": code, "__doc__": f"EpdError with code {code}."})


# One subclass per code, e.g. `except epd.NotFoundError`.
CancelledError = _subclass("CancelledError", 1)
UnknownError = _subclass("UnknownError", 2)
InvalidArgumentError = _subclass("InvalidArgumentError", 3)
DeadlineExceededError = _subclass("DeadlineExceededError", 4)
NotFoundError = _subclass("NotFoundError", 5)
AlreadyExistsError = _subclass("AlreadyExistsError", 6)
PermissionDeniedError = _subclass("PermissionDeniedError", 7)
ResourceExhaustedError = _subclass("ResourceExhaustedError", 8)
FailedPreconditionError = _subclass("FailedPreconditionError", 9)
AbortedError = _subclass("AbortedError", 10)
OutOfRangeError = _subclass("OutOfRangeError", 11)
UnimplementedError = _subclass("UnimplementedError", 12)
InternalError = _subclass("InternalError", 13)
UnavailableError = _subclass("UnavailableError", 14)
DataLossError = _subclass("DataLossError", 15)
UnauthenticatedError = _subclass("UnauthenticatedError", 16)

_BY_CODE = {cls.code: cls for cls in (
    CancelledError, UnknownError, InvalidArgumentError, DeadlineExceededError, NotFoundError,
    AlreadyExistsError, PermissionDeniedError, ResourceExhaustedError, FailedPreconditionError,
    AbortedError, OutOfRangeError, UnimplementedError, InternalError, UnavailableError,
    DataLossError, UnauthenticatedError)}


def error_for(code, message):
    return _BY_CODE.get(code, EpdError)(code, message)


def raise_for_status(code, message):
    raise error_for(code, message)
