"""The one exception type that means "the user gave us something we can't use"."""


class UserError(Exception):
    """Bad input: a recipe, data file, model path or run directory. The CLI prints it and exits with code 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f"\n  fix: {self.hint}" if self.hint else "")


class RunInterrupted(Exception):
    """Training stopped on Ctrl-C / SIGTERM after saving a checkpoint. The CLI prints how to resume; exit 130."""

    def __init__(self, run_dir, resume_command: str):
        super().__init__(f"interrupted: {run_dir}")
        self.run_dir = run_dir
        self.resume_command = resume_command


class ProcessLost(Exception):
    """Another process of a several-process run is gone (its machine killed, frozen or cut off from the network):
    this one stops too, without waiting for it. The CLI says so, with how to go on; exit 3."""

    def __init__(self, message: str, next_step: str):
        super().__init__(message)
        self.message = message
        self.next_step = next_step
