"""Errors that end a command with one clear line instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix; `exit_code` follows the CLI convention (1 failure, 2 usage)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ConfigError(UserError):
    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)
