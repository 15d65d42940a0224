"""quickft's own exceptions (UserError: "the user gave us something we can't use", exit 2; an interrupted run; a lost
process), and how an out-of-memory error reads, which training, generation and export all recognise."""


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


OUT_OF_MEMORY = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cublas_status_not_initialized",
)
"""How running out of GPU memory reads where it is not torch's OutOfMemoryError: a small card's first backward often
fails creating a cuBLAS handle (`CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)`, or
CUBLAS_STATUS_NOT_INITIALIZED, cuBLAS's word for the same failed allocation), or in cuDNN's workspace."""


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error).lower() for m in OUT_OF_MEMORY)
    )
